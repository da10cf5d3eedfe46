"""A load generator for a policy server on this machine: N concurrent websocket clients x M requests of LIBERO-shaped
observations, with the throughput, latency, queueing, batch sizes and transport overhead they saw
(``scripts/bench/bench_serving.py`` runs it against servers it starts)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time

import numpy as np
import websockets.sync.client

from openpi.serving import msgpack_numpy

LOOPBACK = "127.0.0.1"
MAX_CLIENTS = 64
MAX_REQUESTS_PER_CLIENT = 10_000
REPLY_TIMEOUT_S = 60.0


class SyntheticPolicy:
    """Sleeps ``infer_ms`` per call and answers a chunk filled with the request's ``request_id``."""

    def __init__(self, infer_ms: float, action_horizon: int = 10, action_dim: int = 7) -> None:
        self.infer_s = infer_ms / 1000.0
        self.action_shape = (action_horizon, action_dim)
        self.metadata = {"policy": "synthetic", "infer_ms": infer_ms, "action_horizon": action_horizon}

    def infer(self, obs: dict) -> dict:
        time.sleep(self.infer_s)
        return {"actions": np.full(self.action_shape, float(obs["request_id"]), np.float32)}


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """Per-request measurements in milliseconds, in completion order, and the wall time of the whole run."""

    latency_ms: np.ndarray
    infer_ms: np.ndarray
    queue_ms: np.ndarray
    batch_size: np.ndarray
    wall_s: float
    expected: int
    errors: tuple[str, ...]

    @property
    def completed(self) -> int:
        return len(self.latency_ms)

    @property
    def overhead_ms(self) -> np.ndarray:
        """Round trip minus the time in and waiting for the model: transport, msgpack and the event loop."""
        return self.latency_ms - self.infer_ms - self.queue_ms


def libero_observation(rng: np.random.Generator, request_id: int | None = None) -> dict:
    """A random LIBERO-format observation, tagged with ``request_id`` for the synthetic policy (a real policy refuses
    keys its robot does not send)."""
    obs = {
        "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/state": rng.random(8, dtype=np.float32),
        "prompt": "put the black bowl on the plate",
    }
    return obs if request_id is None else {**obs, "request_id": request_id}


def run_load(port: int, num_clients: int, num_requests: int, seed: int = 0, check_ids: bool = True) -> LoadResult:
    """Runs ``num_clients`` concurrent connections to ``127.0.0.1:port``, each sending ``num_requests`` requests;
    ``check_ids``: every reply must hold its request's id (the synthetic policy's answer)."""
    if not 1 <= num_clients <= MAX_CLIENTS or not 1 <= num_requests <= MAX_REQUESTS_PER_CLIENT:
        raise ValueError(f"Need 1..{MAX_CLIENTS} clients and 1..{MAX_REQUESTS_PER_CLIENT} requests per client")
    start_barrier = threading.Barrier(num_clients)

    def client(client_index: int) -> tuple[list[float], list[float], list[float], list[int], list[str]]:
        rng = np.random.default_rng(seed + client_index)
        latencies, infers, queues, batches, errors = [], [], [], [], []
        uri = f"ws://{LOOPBACK}:{port}"
        with websockets.sync.client.connect(uri, compression=None, max_size=None) as conn:
            conn.recv(timeout=REPLY_TIMEOUT_S)  # metadata
            start_barrier.wait()
            for i in range(num_requests):
                request_id = client_index * MAX_REQUESTS_PER_CLIENT + i
                frame = msgpack_numpy.packb(libero_observation(rng, request_id if check_ids else None))
                sent = time.perf_counter()
                conn.send(frame)
                reply = conn.recv(timeout=REPLY_TIMEOUT_S)
                latency = (time.perf_counter() - sent) * 1000.0
                if isinstance(reply, str):
                    errors.append(reply)
                    continue
                result = msgpack_numpy.unpackb(reply)
                if check_ids and not np.all(result["actions"] == request_id):
                    errors.append(f"client {client_index} request {i} got another request's reply")
                    continue
                latencies.append(latency)
                infers.append(result["server_timing"]["infer_ms"])
                queues.append(result["server_timing"]["queue_ms"])
                batches.append(result["server_timing"].get("batch_size", 1))
        return latencies, infers, queues, batches, errors

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(num_clients) as pool:
        outcomes = list(pool.map(client, range(num_clients)))
    wall_s = time.perf_counter() - start
    parts = ([x for part in parts for x in part] for parts in zip(*outcomes, strict=True))
    latencies, infers, queues, batches, errors = parts
    return LoadResult(
        latency_ms=np.array(latencies),
        infer_ms=np.array(infers),
        queue_ms=np.array(queues),
        batch_size=np.array(batches),
        wall_s=wall_s,
        expected=num_clients * num_requests,
        errors=tuple(errors),
    )


def markdown_row(label: str, num_clients: int, num_requests: int, result: LoadResult) -> str:
    """One results-table row: setting, load, completion, throughput, latency, batch and overhead percentiles."""

    def pct(values: np.ndarray, q: float) -> str:
        return f"{np.percentile(values, q):.2f}" if len(values) else "-"

    return (
        f"| {label} | {num_clients} | {num_requests} | {result.completed}/{result.expected} | "
        f"{result.completed / result.wall_s:.1f} | {pct(result.latency_ms, 50)} | {pct(result.latency_ms, 99)} | "
        f"{pct(result.infer_ms, 50)} | {pct(result.queue_ms, 50)} | {np.mean(result.batch_size):.2f} | "
        f"{pct(result.overhead_ms, 50)} | {pct(result.overhead_ms, 99)} |"
    )


MARKDOWN_HEADER = (
    "| server | clients | requests/client | completed | req/s | latency p50 (ms) | latency p99 (ms) | infer_ms p50 | "
    "queue_ms p50 | mean batch | overhead p50 (ms) | overhead p99 (ms) |\n" + "|---" * 12 + "|"
)
