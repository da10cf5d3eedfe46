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
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bench_common
import msgpack
import numpy as np
import tyro
import websockets.sync.client

from openpi.models import tokenizer
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies import libero_policy, policy_config
from openpi.serving import msgpack_numpy
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from openpi.shared import normalize
from openpi.training import config as _config

ASSET_ID = "physical-intelligence/libero"
STALL_FRAME = b"\xdf\x00\xff\xff\xff" + b"\x80" * (16 * 2**20)  # a 16 MiB map header followed by junk


def valid_observation(rng: np.random.Generator) -> dict:
    return {
        "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "observation/state": rng.uniform(-1, 1, 8).astype(np.float32),
        "prompt": "pick up the black bowl",
    }


def _with(**changes) -> Callable[[np.random.Generator], bytes]:
    def make(rng: np.random.Generator) -> bytes:
        obs = valid_observation(rng)
        obs.update(changes)
        return msgpack_numpy.packb(obs)

    return make


def _without(key: str) -> Callable[[np.random.Generator], bytes]:
    def make(rng: np.random.Generator) -> bytes:
        obs = valid_observation(rng)
        del obs[key]
        return msgpack_numpy.packb(obs)

    return make


def _raw(payload) -> Callable[[np.random.Generator], bytes]:
    return lambda rng: msgpack.packb(payload, use_bin_type=True)


BAD_FRAMES: dict[str, Callable[[np.random.Generator], bytes]] = {
    "junk bytes": lambda rng: bytes(rng.integers(0, 256, int(rng.integers(1, 200))).tolist()),
    "0xc1": lambda rng: b"\xc1",
    "deep nesting": lambda rng: b"\x91" * 50_000 + b"\xc0",
    "junk map header": lambda rng: b"\xdf\x7f\xff\xff\xff" + b"\x80" * 4096,
    "not a map": _raw([1, 2, 3]),
    "scalar overflow": _raw({"observation/state": {b"__npgeneric__": True, b"data": 1000, b"dtype": "|u1"}}),
    "structured dtype": _raw({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "i4,)", b"shape": [0]}}),
    "NaN state": _with(**{"observation/state": np.full(8, np.nan, np.float32)}),
    "inf state": _with(**{"observation/state": np.full(8, np.inf, np.float32)}),
    "short state": _with(**{"observation/state": np.zeros(5, np.float32)}),
    "empty image": _with(**{"observation/image": np.zeros((0, 96, 3), np.uint8)}),
    "flat image": _with(**{"observation/image": np.zeros((96, 96), np.uint8)}),
    "int64 image": _with(**{"observation/image": np.full((32, 32, 3), 300, np.int64)}),
    "float image": _with(**{"observation/image": np.full((32, 32, 3), 7.0, np.float32)}),
    "prompt None": _with(prompt=None),
    "prompt int": _with(prompt=5),
    "prompt map": _with(prompt={"a": 1}),
    "prompt bytes": _with(prompt=b"\xff\xfe\xfa"),
    "missing state": _without("observation/state"),
    "missing image": _without("observation/wrist_image"),
}


def names_the_problem(error: str) -> bool:
    """An error text names the frame (``Invalid request``) or a key / the prompt."""
    return error.startswith("Invalid request: ") or bool(re.search(r"'[^']+'", error))


@dataclasses.dataclass
class Counts:
    frames: int = 0
    dropped: int = 0
    answered_with_actions: int = 0
    unnamed_errors: int = 0
    valid_sent: int = 0
    valid_failed: int = 0


def fuzz_connection(port: int, frames: int, valid_every: int, seed: int) -> Counts:
    """One connection's share of the fuzz."""
    rng = np.random.default_rng(seed)
    kinds = list(BAD_FRAMES.values())
    counts = Counts()
    try:
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", max_size=None) as connection:
            connection.recv()
            for i in range(frames):
                counts.frames += 1
                if i % valid_every == 0:
                    counts.valid_sent += 1
                    connection.send(msgpack_numpy.packb(valid_observation(rng)))
                    reply = connection.recv()
                    counts.valid_failed += not isinstance(reply, bytes)
                    continue
                bad_index = i - counts.valid_sent  # cycles through every kind
                connection.send(kinds[bad_index % len(kinds)](rng))
                reply = connection.recv()
                if not isinstance(reply, str):
                    counts.answered_with_actions += 1
                elif not names_the_problem(reply):
                    counts.unnamed_errors += 1
    except websockets.exceptions.ConnectionClosed:
        counts.dropped += 1
    return counts


def stall_probe(port: int, requests: int = 30) -> tuple[float, float]:
    """p50 request latency (ms) of one client, quiet and while another client sends 16 MiB junk-map frames."""
    rng = np.random.default_rng(1)
    frame = msgpack_numpy.packb(valid_observation(rng))

    def timed(connection) -> float:
        start = time.perf_counter()
        connection.send(frame)
        connection.recv()
        return (time.perf_counter() - start) * 1000

    with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", max_size=None) as probe:
        probe.recv()
        quiet = statistics.median(timed(probe) for _ in range(requests))
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", max_size=None) as attacker:
            attacker.recv()
            loaded = []
            for _ in range(requests):
                attacker.send(STALL_FRAME)
                loaded.append(timed(probe))
                attacker.recv()
        return quiet, statistics.median(loaded)


def serve_tiny_policy(workdir: Path) -> WebsocketPolicyServer:
    """A random-weight ``debug_pi05`` behind a server on a free loopback port (not yet started)."""
    tokenizer_path = tokenizer.train_sentencepiece(["pick up the black bowl"], workdir / "tok", vocab_size=300)
    config = dataclasses.replace(
        _config.get_config("debug_pi05"), data=libero_policy.LeRobotLiberoDataConfig(tokenizer_path=str(tokenizer_path))
    )
    checkpoint = workdir / "checkpoint"
    weights.save_weights(PI0Pytorch(config.model), checkpoint)
    identity = normalize.NormStats(mean=np.zeros(8), std=np.ones(8), q01=-np.ones(8), q99=np.ones(8))
    normalize.save(checkpoint / "assets" / ASSET_ID, {"state": identity, "actions": identity})
    policy = policy_config.create_trained_policy(
        config, checkpoint, sample_kwargs={"num_steps": 2}, pytorch_device="cpu"
    )
    return WebsocketPolicyServer(policy, host="127.0.0.1", port=0, max_message_bytes=32 * 2**20)


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
    bench_common.write_run(args.output, command, lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
