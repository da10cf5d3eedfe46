"""A protocol fuzzer for a policy server on this machine: seeded bad frames of every kind (``BAD_FRAMES``) with valid
LIBERO observations between them, counted per kind by how the server answered; handshakes of every kind
(``HANDSHAKES``); and the probes of what one client can cost the others: junk or many-key frames on one connection
(:func:`stall_probe`) and clients that send large frames without reading their replies (:func:`slow_reader_probe`).
``scripts/bench/fuzz_server.py`` runs them against a tiny policy."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import http
import http.client
import re
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import msgpack
import numpy as np
import websockets.exceptions
import websockets.sync.client

from openpi.serving import msgpack_numpy

STALL_FRAME = b"\xdf\x00\xff\xff\xff" + b"\x80" * (16 * 2**20)  # a 16 MiB map header followed by junk
VALID = "valid observation"


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


@functools.cache
def many_keys_frame(arrays: int) -> bytes:
    """A valid observation plus ``arrays`` one-byte arrays under keys of their own (built once: packing is slow)."""
    extra = {f"k{i}": np.zeros(1, np.uint8) for i in range(arrays)}
    return msgpack_numpy.packb({**valid_observation(np.random.default_rng(0)), **extra})


BAD_FRAMES: dict[str, Callable[[np.random.Generator], bytes | str]] = {
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
    "text frame": lambda rng: "observation as text",
    "state as a dict": _with(**{"observation/state": {"x": np.zeros(8, np.float32)}}),
    "kept patches as an array": _with(return_kept_patches=np.ones(3, bool)),
    "unknown numeric key": _with(request_id=np.int64(7)),
    "unknown nested dict": _with(extra={"a": {"b": np.zeros(2, np.float32)}}),
    "per-request budget": _with(token_prune_keep_ratio=0.1),
    "state 1e39 (float64)": _with(**{"observation/state": np.full(8, 1e39)}),
    "state 1e6": _with(**{"observation/state": np.full(8, 1e6, np.float32)}),
    "60,000 keys": lambda rng: many_keys_frame(60_000),
}


def names_the_problem(error: str) -> bool:
    """An error text names the frame (``Invalid request``) or a key / the prompt."""
    return error.startswith("Invalid request: ") or bool(re.search(r"'[^']+'", error))


@dataclasses.dataclass
class KindCounts:
    """How the server answered the frames (or handshakes) of one kind: connections it dropped, wrong answers (a bad
    frame answered with actions, a valid one with an error, a handshake with an unexpected status) and errors that
    name neither the frame nor a key."""

    frames: int = 0
    dropped: int = 0
    wrong_answers: int = 0
    unnamed_errors: int = 0

    def add(self, other: KindCounts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def merge(results: list[dict[str, KindCounts]]) -> dict[str, KindCounts]:
    """Per kind, the sum of several fuzz runs' counts."""
    total: dict[str, KindCounts] = {}
    for result in results:
        for kind, counts in result.items():
            total.setdefault(kind, KindCounts()).add(counts)
    return total


@contextlib.contextmanager
def _connect(port: int, api_key: str | None) -> Iterator[websockets.sync.client.ClientConnection]:
    headers = None if api_key is None else {"Authorization": f"Api-Key {api_key}"}
    uri = f"ws://127.0.0.1:{port}"
    with websockets.sync.client.connect(uri, max_size=None, additional_headers=headers) as connection:
        connection.recv(timeout=60)  # metadata
        yield connection


def fuzz_connection(port: int, rounds: int, seed: int, api_key: str | None = None) -> dict[str, KindCounts]:
    """Sends ``rounds`` rounds of seeded frames to ``127.0.0.1:port`` on one connection, each round a valid
    observation and one frame of every kind in ``BAD_FRAMES``; a dropped connection is counted and reopened."""
    rng = np.random.default_rng(seed)
    kinds: dict[str, Callable] = {VALID: lambda rng: msgpack_numpy.packb(valid_observation(rng)), **BAD_FRAMES}
    counts = {kind: KindCounts() for kind in kinds}
    with contextlib.ExitStack() as stack:
        connection = stack.enter_context(_connect(port, api_key))
        for _ in range(rounds):
            for kind, make in kinds.items():
                counts[kind].frames += 1
                try:
                    connection.send(make(rng))
                    reply = connection.recv(timeout=60)
                except websockets.exceptions.ConnectionClosed:
                    counts[kind].dropped += 1
                    connection = stack.enter_context(_connect(port, api_key))
                    continue
                _tally(counts[kind], kind, reply)
    return counts


def _tally(counts: KindCounts, kind: str, reply: bytes | str) -> None:
    if kind == VALID:
        counts.wrong_answers += not isinstance(reply, bytes)
    elif not isinstance(reply, str):
        counts.wrong_answers += 1
    elif not names_the_problem(reply):
        counts.unnamed_errors += 1


HANDSHAKES: dict[str, tuple[list[tuple[str, str]], str, int]] = {
    # kind: (headers, path, expected HTTP status)
    "two Authorization headers": ([("Authorization", "Api-Key {key}")] * 2, "/", http.HTTPStatus.UNAUTHORIZED),
    "wrong API key": ([("Authorization", "Api-Key wrong")], "/", http.HTTPStatus.UNAUTHORIZED),
    "/healthz with a query": ([], "/healthz?probe=1", http.HTTPStatus.OK),
}


def handshake_fuzz(port: int, rounds: int, api_key: str) -> dict[str, KindCounts]:
    """Sends ``rounds`` requests of every kind in ``HANDSHAKES`` to a server that requires ``api_key``; a status other
    than the expected one is a wrong answer."""
    counts = {kind: KindCounts() for kind in HANDSHAKES}
    for _ in range(rounds):
        for kind, (headers, path, expected) in HANDSHAKES.items():
            counts[kind].frames += 1
            status = _status(port, path, [(name, value.format(key=api_key)) for name, value in headers])
            counts[kind].wrong_answers += status != expected
    return counts


_UPGRADE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


def _status(port: int, path: str, headers: list[tuple[str, str]]) -> int:
    """The HTTP status the server answers a GET of ``path`` with (a websocket upgrade for ``/``); headers may
    repeat."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("GET", path)
        for name, value in headers + (_UPGRADE if path == "/" else []):
            connection.putheader(name, value)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def _timed(connection, frame: bytes) -> float:
    start = time.perf_counter()
    connection.send(frame)
    connection.recv(timeout=120)
    return (time.perf_counter() - start) * 1000


def stall_probe(port: int, frame: bytes = STALL_FRAME, requests: int = 30, api_key: str | None = None) -> dict:
    """p50 and p95 request latency (ms) of one client, quiet and while another client sends ``frame`` (default: a
    16 MiB junk-map frame) before each of its requests."""
    rng = np.random.default_rng(1)
    valid = msgpack_numpy.packb(valid_observation(rng))
    with _connect(port, api_key) as probe:
        quiet = [_timed(probe, valid) for _ in range(requests)]
        with _connect(port, api_key) as attacker:
            loaded = []
            for _ in range(requests):
                attacker.send(frame)
                loaded.append(_timed(probe, valid))
                attacker.recv(timeout=120)
    return {"quiet": _percentiles(quiet), "loaded": _percentiles(loaded)}


def _percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p95": float(np.percentile(values, 95))}


def large_valid_frame(megabytes: int) -> bytes:
    """A valid LIBERO observation whose base camera image makes the frame about ``megabytes`` MB."""
    side = int((megabytes * 1e6 / 3) ** 0.5)
    obs = valid_observation(np.random.default_rng(2))
    obs["observation/image"] = np.random.default_rng(3).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return msgpack_numpy.packb(obs)


@dataclasses.dataclass
class SlowReaders:
    """What clients that send large valid frames without reading their replies cost a client that reads them."""

    quiet: dict[str, float]  # the reading client's latency percentiles (ms) alone
    loaded: dict[str, float]  # ... while the slow readers send
    frames_sent: int  # large frames the slow readers got into the network (the last may be partly sent)
    close_reasons: list[str]  # how the server closed a slow reader's connection, if it did


def slow_reader_probe(
    port: int, *, readers: int = 3, frame_mb: int = 48, requests: int = 60, api_key: str | None = None
) -> SlowReaders:
    """Runs ``requests`` timed requests of one well-behaved client alone, then again while ``readers`` clients send
    ``frame_mb`` MB valid observations back to back without reading a reply (reconnecting if the server closes
    them). The slow readers start a second before the timed requests, and stop after them."""
    valid = msgpack_numpy.packb(valid_observation(np.random.default_rng(1)))
    large = large_valid_frame(frame_mb)
    flood = _Flood(port, large, api_key)
    with _connect(port, api_key) as probe:
        quiet = [_timed(probe, valid) for _ in range(requests)]
        with concurrent.futures.ThreadPoolExecutor(readers) as pool:
            floods = [pool.submit(flood.run) for _ in range(readers)]
            time.sleep(1.0)
            loaded = [_timed(probe, valid) for _ in range(requests)]
            flood.stop()
            outcomes = [f.result() for f in floods]
    reasons = [reason for _, closed in outcomes for reason in closed]
    return SlowReaders(_percentiles(quiet), _percentiles(loaded), sum(sent for sent, _ in outcomes), reasons)


class _Flood:
    """Clients that send one frame back to back without reading replies, until stopped (their sockets are shut down
    then: a throttled sender is blocked in its send)."""

    def __init__(self, port: int, frame: bytes, api_key: str | None) -> None:
        self._port, self._frame, self._api_key = port, frame, api_key
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def run(self) -> tuple[int, list[str]]:
        """Sends until stopped, reconnecting when the server closes the connection; returns the frames sent and the
        server's close reasons."""
        sent, reasons = 0, []
        while not self._stopped.is_set():
            try:
                with _connect(self._port, self._api_key) as connection:
                    with self._lock:
                        self._sockets.append(connection.socket)
                    while not self._stopped.is_set():
                        connection.send(self._frame)
                        sent += 1
            except websockets.exceptions.ConnectionClosed as closed:
                if not self._stopped.is_set():
                    reasons.append(f"{closed.rcvd.code} {closed.rcvd.reason}" if closed.rcvd else "no close frame")
            except OSError:
                if not self._stopped.is_set():
                    raise
        return sent, reasons

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
