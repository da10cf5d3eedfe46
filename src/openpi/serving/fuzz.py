"""A protocol fuzzer for a policy server on this machine: seeded bad frames of every kind (``BAD_FRAMES``) with valid
LIBERO observations between them, counted by how the server answered, and a stall probe (a 16 MiB junk frame on one
connection while another measures its latency). ``scripts/bench/fuzz_server.py`` runs it against a tiny policy."""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Callable

import msgpack
import numpy as np
import websockets.sync.client

from openpi.serving import msgpack_numpy

STALL_FRAME = b"\xdf\x00\xff\xff\xff" + b"\x80" * (16 * 2**20)  # a 16 MiB map header followed by junk


def valid_observation(rng: np.random.Generator) -> dict:
    """A random observation in LIBERO's format, which a LIBERO policy answers with actions."""
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
    """What a fuzz saw: frames sent, connections the server dropped, bad frames it answered with actions or with an
    error that names neither the frame nor a key, and the valid requests sent and failed."""

    frames: int = 0
    dropped: int = 0
    answered_with_actions: int = 0
    unnamed_errors: int = 0
    valid_sent: int = 0
    valid_failed: int = 0


def fuzz_connection(port: int, frames: int, valid_every: int, seed: int) -> Counts:
    """One connection to ``127.0.0.1:port`` sending ``frames`` seeded frames: every ``valid_every``-th a valid
    observation, the others each kind of ``BAD_FRAMES`` in turn."""
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
