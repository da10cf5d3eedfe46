"""Fuzzes a real policy server on loopback: bad frames of every kind, valid requests between them, and a stall probe.

    uv run scripts/bench/fuzz_server.py --frames 10000 --connections 4

A tiny random-weight π0.5 (``debug_pi05`` with a LIBERO data config) is served on 127.0.0.1. Each connection sends
seeded frames (every kind in ``BAD_FRAMES`` in turn, and a valid observation every ``--valid-every`` frames). Counted:
dropped connections, bad frames answered with actions, error texts that name neither the frame nor a key, failed
valid requests. The stall probe sends a 16 MiB junk-map frame on one connection while another measures its
request latency; the added latency is the probe's p50 minus the quiet p50. Writes a Markdown table into ``--output``
(a new run of the same command replaces its table).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import tyro

from openpi.cli.random_policies import serve_tiny_policy
from openpi.serving.fuzz import BAD_FRAMES, Counts, fuzz_connection, stall_probe
from openpi.shared import results_file


@dataclasses.dataclass
class Args:
    frames: int = 10_000
    connections: int = 4
    valid_every: int = 4
    seed: int = 0
    output: Path = Path(__file__).parent / "results" / "fuzz_server.md"


def main(args: Args) -> dict:
    with tempfile.TemporaryDirectory() as workdir, serve_tiny_policy(Path(workdir)).running_in_background() as port:
        start = time.perf_counter()
        per_connection = args.frames // args.connections
        with concurrent.futures.ThreadPoolExecutor(args.connections) as pool:
            results = list(
                pool.map(
                    lambda i: fuzz_connection(port, per_connection, args.valid_every, args.seed + i),
                    range(args.connections),
                )
            )
        seconds = time.perf_counter() - start
        quiet, loaded = stall_probe(port)
    total = Counts(**{f.name: sum(getattr(r, f.name) for r in results) for f in dataclasses.fields(Counts)})
    summary = {**dataclasses.asdict(total), "seconds": seconds, "quiet_p50_ms": quiet, "stalled_p50_ms": loaded}
    _write(args, summary)
    print(summary)
    return summary


def _write(args: Args, s: dict) -> None:
    command = "uv run scripts/bench/fuzz_server.py " + " ".join(sys.argv[1:])
    lines = [
        f"## {time.strftime('%Y-%m-%d')} — {s['frames']} frames on {args.connections} connections (CPU, loopback)",
        "",
        "```",
        command,
        "```",
        "",
        "| frames | dropped connections | bad frames answered with actions | unnamed errors | valid requests "
        "| valid failed | quiet p50 ms | p50 ms during 16 MiB junk frames | added |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s['frames']} | {s['dropped']} | {s['answered_with_actions']} | {s['unnamed_errors']} | {s['valid_sent']} "
        f"| {s['valid_failed']} | {s['quiet_p50_ms']:.1f} | {s['stalled_p50_ms']:.1f} "
        f"| {s['stalled_p50_ms'] - s['quiet_p50_ms']:+.1f} |",
        "",
        f"{len(BAD_FRAMES)} kinds of bad frames ({', '.join(BAD_FRAMES)}); a valid observation every "
        f"{args.valid_every} frames; {s['seconds']:.0f} s.",
    ]
    results_file.write_run(args.output, command, lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
