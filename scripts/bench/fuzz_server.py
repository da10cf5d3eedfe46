"""Fuzzes a real policy server on loopback: frames and handshakes of every kind, what one client can cost the others,
the server's memory and its shutdown.

    uv run scripts/bench/fuzz_server.py --frames-per-kind 10000 --connections 4

A tiny random-weight π0.5 (``debug_pi05`` with a LIBERO data config) is served by its own process on 127.0.0.1 with
the serving defaults (``ServerLimits()``, batches of up to 16, an API key). Measured:

1. Frames: each connection sends rounds of seeded frames, a valid observation and one frame of every kind in
   ``BAD_FRAMES``, until every kind was sent ``--frames-per-kind`` times; per kind, dropped connections, wrong answers
   (a bad frame answered with actions, a valid one with an error) and errors naming neither the frame nor a key.
2. Handshakes of every kind in ``HANDSHAKES``, ``--frames-per-kind`` each; a status other than the expected one is
   a wrong answer.
3. Stalls: a reading client's latency alone and while another client sends a 16 MiB junk frame, or a frame of
   600,000 one-byte arrays, before each of its requests.
4. Slow readers: a reading client's latency alone and while three clients send 48 MB valid observations without
   reading their replies (reconnecting whenever the server disconnects them).
5. The server's resident memory (sampled every 20 ms) against the bound in docs/serving.md, and its exit status and
   time after SIGTERM.

Writes a Markdown table into ``--output`` (a new run of the same command replaces its table).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import tyro

from openpi.serving import fuzz
from openpi.serving.connection_limits import MIB, ServerLimits
from openpi.shared import results_file

API_KEY = "fuzz-key"
MANY_KEYS = 600_000
SERVER = """
import logging, sys
from pathlib import Path
from openpi.cli.random_policies import serve_tiny_policy
from openpi.serving.connection_limits import ServerLimits

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
serve_tiny_policy(Path(sys.argv[1]), limits=ServerLimits(), max_batch=16, api_key=sys.argv[2]).serve_forever()
"""


@dataclasses.dataclass
class Args:
    frames_per_kind: int = 10_000
    """Frames of every kind (the valid observation included), and handshakes of every kind."""
    connections: int = 4
    seed: int = 0
    probe_requests: int = 60
    """Timed requests of the reading client, alone and under each load."""
    output: Path = Path(__file__).parent / "results" / "fuzz_server.md"


class MemorySampler:
    """Samples a process's resident memory (VmRSS) every 20 ms; :meth:`phase_peak` is the peak since the last call."""

    def __init__(self, pid: int) -> None:
        self._status = Path(f"/proc/{pid}/status")
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        for line in self._status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS in {self._status}")

    def phase_peak(self) -> int:
        peak, self._peak = max(self._peak, self.rss()), 0
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, RuntimeError):
                self._peak = max(self._peak, self.rss())


@contextlib.contextmanager
def server_process(workdir: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """The tiny policy server in its own process (its log in ``workdir/server.log``); yields it and its port."""
    log_path = workdir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-c", SERVER, str(workdir), API_KEY], stdout=log, stderr=log)
    try:
        yield process, _wait_for_port(process, log_path)
    finally:
        process.kill()


def _wait_for_port(process: subprocess.Popen, log_path: Path) -> int:
    while process.poll() is None:
        for line in log_path.read_text().splitlines():
            if "Policy server listening on" in line:
                return int(line.rsplit(":", 1)[1])
        time.sleep(0.2)
    raise RuntimeError(f"the server exited: {log_path.read_text()[-2000:]}")


def main(args: Args) -> dict:
    # The slow readers' sockets are shut down under their clients at the end, which websockets logs as errors.
    logging.getLogger("websockets.client").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as workdir, server_process(Path(workdir)) as (process, port):
        memory = MemorySampler(process.pid)
        baseline = memory.phase_peak()
        summary: dict = {"baseline_rss": baseline}
        start = time.perf_counter()
        rounds = args.frames_per_kind // args.connections
        with concurrent.futures.ThreadPoolExecutor(args.connections) as pool:
            runs = [
                pool.submit(fuzz.fuzz_connection, port, rounds, args.seed + i, API_KEY) for i in range(args.connections)
            ]
            summary["frames"] = fuzz.merge([run.result() for run in runs])
        summary["frames_s"] = time.perf_counter() - start
        summary["frames_rss"] = memory.phase_peak()
        summary["handshakes"] = fuzz.handshake_fuzz(port, args.frames_per_kind, API_KEY)
        summary["junk_stall"] = fuzz.stall_probe(port, requests=args.probe_requests // 2, api_key=API_KEY)
        many_keys = fuzz.many_keys_frame(MANY_KEYS)
        summary["keys_stall"] = fuzz.stall_probe(port, many_keys, args.probe_requests // 2, API_KEY)
        summary["keys_frame_mib"] = len(many_keys) / MIB
        summary["stall_rss"] = memory.phase_peak()
        summary["slow_readers"] = fuzz.slow_reader_probe(port, requests=args.probe_requests, api_key=API_KEY)
        summary["slow_readers_rss"] = memory.phase_peak()
        summary["throttles"] = (Path(workdir) / "server.log").read_text().count("before its previous reply")
        memory.stop()
        stop_start = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        summary["exit_code"] = process.wait(timeout=120)
        summary["exit_s"] = time.perf_counter() - stop_start
    _write(args, summary)
    return summary


def _write(args: Args, s: dict) -> None:
    command = "uv run scripts/bench/fuzz_server.py " + " ".join(sys.argv[1:])
    bound = s["baseline_rss"] + ServerLimits().memory_bound_bytes(connections=4, frame_bytes=48 * 10**6)
    kinds = [(kind, c) for kind, c in {**s["frames"], **s["handshakes"]}.items()]
    total = fuzz.KindCounts()
    for _, c in kinds:
        total.add(c)
    readers = s["slow_readers"]
    lines = [
        f"## {time.strftime('%Y-%m-%d')} — {args.frames_per_kind} frames of each of {len(s['frames'])} kinds on "
        f"{args.connections} connections, {len(s['handshakes'])} kinds of handshakes (CPU, loopback)",
        "",
        "```",
        command,
        "```",
        "",
        "| kind | frames | dropped connections | wrong answers | unnamed errors |",
        "|---|---|---|---|---|",
        *(f"| {kind} | {c.frames} | {c.dropped} | {c.wrong_answers} | {c.unnamed_errors} |" for kind, c in kinds),
        f"| **all** | {total.frames} | {total.dropped} | {total.wrong_answers} | {total.unnamed_errors} |",
        "",
        f"Frames: {s['frames_s']:.0f} s.",
        "",
        "| a reading client's latency (ms) | p50 | p95 | p50 / quiet p50 |",
        "|---|---|---|---|",
        *_latency_rows("quiet", "16 MiB junk frames", s["junk_stall"]),
        *_latency_rows("quiet", f"{s['keys_frame_mib']:.0f} MiB frames of {MANY_KEYS:,} arrays", s["keys_stall"]),
        *_latency_rows("quiet", "3 clients sending 48 MB frames without reading", vars(readers)),
        "",
        f"Slow readers: {readers.frames_sent} frames of 48 MB got into the network; the server throttled them "
        f"{s['throttles']} times and closed their connections {len(readers.close_reasons)} times"
        f"{' (' + '; '.join(sorted(set(readers.close_reasons))) + ')' if readers.close_reasons else ''}.",
        "",
        "| server memory (resident) | MiB |",
        "|---|---|",
        f"| after start-up | {s['baseline_rss'] / MIB:.0f} |",
        f"| peak during the frames | {s['frames_rss'] / MIB:.0f} |",
        f"| peak during the stalls | {s['stall_rss'] / MIB:.0f} |",
        f"| peak during the slow readers | {s['slow_readers_rss'] / MIB:.0f} |",
        f"| bound for 4 connections and 48 MB frames (docs/serving.md) | {bound / MIB:.0f} |",
        "",
        f"SIGTERM: exit status {s['exit_code']} after {s['exit_s']:.1f} s.",
    ]
    results_file.write_run(args.output, command, lines)
    print("\n".join(lines))


def _latency_rows(quiet_label: str, loaded_label: str, probe: dict) -> list[str]:
    quiet, loaded = probe["quiet"], probe["loaded"]
    return [
        f"| {quiet_label} (before: {loaded_label}) | {quiet['p50']:.1f} | {quiet['p95']:.1f} | 1.00 |",
        f"| during {loaded_label} | {loaded['p50']:.1f} | {loaded['p95']:.1f} | {loaded['p50'] / quiet['p50']:.2f} |",
    ]


if __name__ == "__main__":
    main(tyro.cli(Args))
