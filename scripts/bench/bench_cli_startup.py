"""How long the command lines take to answer: ``--help`` of each, and a server's start until ``/healthz`` says ready.

Each command runs in a fresh child process ``--repeats`` times; the table shows the median wall time, the slowest, and
the median CPU time of the child (user + system: on a shared machine the wall time grows with the other jobs' load,
the CPU time much less). The server is started on a checkpoint folder (the quickstart's by default) and timed until
``GET /healthz`` answers 200: imports, loading, verification and the warm-up inference. ``--baseline-repo`` (with its
``--baseline-python``) times the same ``--help`` commands of another checkout in the same run, e.g. one before a change.

    uv run scripts/bench/bench_cli_startup.py [--checkpoint checkpoints/debug_pi05_lightvla/quickstart/300]
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import tyro

from openpi.shared.results_file import write_run

REPO = Path(__file__).resolve().parents[2]
HELP_COMMANDS = (
    ("scripts/train_pytorch.py", "debug_pi05_lightvla", "--help"),
    ("scripts/train.py", "debug_pi05_lightvla", "--help"),
    ("scripts/serve_policy.py", "--help"),
    ("scripts/compute_norm_stats.py", "--help"),
    ("scripts/eval_closed_loop.py", "--help"),
)


@dataclasses.dataclass
class Args:
    checkpoint: str = "checkpoints/debug_pi05_lightvla/quickstart/300"
    """Checkpoint folder the server start is timed on (trained by the README's quickstart); empty: skip."""
    config: str = "debug_pi05_lightvla"
    """Training config of --checkpoint."""
    repeats: int = 3
    """Runs of each command."""
    baseline_repo: Path | None = None
    """Another checkout whose --help commands are timed too (e.g. the code before a change)."""
    baseline_python: str = sys.executable
    """The Python (of its environment) that runs --baseline-repo's commands."""
    output: Path = REPO / "scripts" / "bench" / "results" / "cli_startup.md"
    """Results file (its section for this command is replaced)."""


def time_help(python: str, repo: Path, argv: tuple[str, ...]) -> tuple[float, float]:
    """Wall and CPU seconds until ``python argv`` exits in ``repo`` (``--help`` prints and exits)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([python, *argv], cwd=repo, capture_output=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def time_server_start(checkpoint: str, config: str) -> tuple[float, float]:
    """Wall seconds from starting serve_policy.py on ``checkpoint`` until its ``/healthz`` answers 200, and the CPU
    seconds the server used by then."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "scripts/serve_policy.py", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--pytorch-device", "cpu", "policy:checkpoint", "--policy.config", config, "--policy.dir", checkpoint]
    start = time.perf_counter()
    server = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
                    if reply.status == 200:
                        return time.perf_counter() - start, _cpu_seconds(server.pid)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise RuntimeError(f"The server exited: {server.stderr.read()[-2000:]}")
    finally:
        server.terminate()
        server.wait(timeout=60)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(args: Args) -> None:
    rows = []
    checkouts = [("", sys.executable, REPO)]
    if args.baseline_repo is not None:
        checkouts.append((f" (baseline {args.baseline_repo})", args.baseline_python, args.baseline_repo))
    for label, python, repo in checkouts:
        for argv in HELP_COMMANDS:
            rows.append((" ".join(argv) + label, [time_help(python, repo, argv) for _ in range(args.repeats)]))
    if args.checkpoint:
        times = [time_server_start(args.checkpoint, args.config) for _ in range(args.repeats)]
        rows.append((f"scripts/serve_policy.py ... --policy.dir {args.checkpoint} (until /healthz is 200)", times))
    command = "uv run scripts/bench/bench_cli_startup.py " + shlex.join(sys.argv[1:])
    load = os.getloadavg()[0]
    lines = [
        f"## {datetime.date.today()}: {platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at the end"
        " (a shared machine: indicative)",
        "",
        "```",
        command.strip(),
        "```",
        "",
        "| command | median wall s | slowest wall s | median CPU s |",
        "|---|---|---|---|",
        *(
            f"| `{name}` | {statistics.median(w for w, _ in t):.2f} | {max(w for w, _ in t):.2f} | "
            f"{statistics.median(c for _, c in t):.2f} |"
            for name, t in rows
        ),
    ]
    write_run(args.output, command, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))
