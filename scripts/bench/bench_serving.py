"""Load test of the websocket policy server on loopback: N concurrent clients x M requests each.

Starts the server in a separate process around a policy, sends LIBERO-shaped observations (two 224x224 RGB images,
8-dim state, a prompt), and prints throughput, latency percentiles, the time requests waited for the (serialised)
model, the batch sizes the server formed, and the overhead beyond the server-reported ``infer_ms`` and ``queue_ms``:

    uv run scripts/bench/bench_serving.py --clients 1 8 --requests 200 --infer-ms 20      # synthetic policy
    uv run scripts/bench/bench_serving.py --model mid --servers b1 b16 b16+p0.25 --clients 1 4 16

``--model synthetic`` sleeps ``--infer-ms`` per call and answers a chunk holding the request id, so the numbers
isolate the server and every reply is checked to be the request's own. ``--model tiny|mid`` serves a real π0.5 of
that size (random weights) through the LIBERO pipeline (prompts padded to 200 tokens); one server per ``--servers``
setting, so the settings are compared in one run. A setting joins with ``+``: ``bN`` batches up to N requests per
call (``b1``: off), ``pR`` prunes to the fraction R of the image patches, ``untrimmed`` runs the prompt's padding
through the model, ``compiled`` wraps ``sample_actions`` in ``torch.compile`` with the serving buckets (kept count
in 16s, batch in powers of two; warmed up before the clients start).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import tyro
import websockets.sync.client

from openpi.serving import msgpack_numpy
from openpi.serving.websocket_policy_server import WebsocketPolicyServer

LOOPBACK = "127.0.0.1"
MAX_CLIENTS = 64
MAX_REQUESTS_PER_CLIENT = 10_000
REPLY_TIMEOUT_S = 60.0

logger = logging.getLogger(__name__)


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


def libero_observation(rng: np.random.Generator, request_id: int) -> dict:
    """A random LIBERO-format observation tagged with ``request_id``."""
    return {
        "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/state": rng.random(8, dtype=np.float32),
        "prompt": "put the black bowl on the plate",
        "request_id": request_id,
    }


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
                frame = msgpack_numpy.packb(libero_observation(rng, request_id))
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


@dataclasses.dataclass(frozen=True)
class ServerSetting:
    """One server to measure; see the module docstring for the ``b16+p0.25+untrimmed+compiled`` spelling."""

    max_batch: int = 1
    keep_ratio: float | None = None
    trim: bool = True
    compiled: bool = False

    @classmethod
    def parse(cls, spec: str) -> ServerSetting:
        fields: dict = {}
        for part in spec.split("+"):
            if part[:1] == "b" and part[1:].isdigit():
                fields["max_batch"] = int(part[1:])
            elif part[:1] == "p" and _is_float(part[1:]):
                fields["keep_ratio"] = float(part[1:])
            elif part in ("untrimmed", "compiled"):
                fields["trim" if part == "untrimmed" else "compiled"] = part == "compiled"
            else:
                raise ValueError(f"Unknown server setting {part!r} in {spec!r}: use bN, pR, untrimmed, compiled")
        return cls(**fields)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclasses.dataclass
class Args:
    clients: tuple[int, ...] = (1, 4, 16)
    """Concurrent client counts to measure, one run each."""
    requests: int = 100
    """Requests per client."""
    model: Literal["synthetic", "tiny", "mid"] = "synthetic"
    infer_ms: float = 20.0
    """Time the synthetic policy spends per call."""
    servers: tuple[str, ...] = ("b1",)
    """Server settings to compare, one server each (e.g. b1 b16 b16+p0.25 b16+untrimmed b16+compiled)."""
    threads: int = 2
    """Torch threads of the server process."""
    seed: int = 0
    output: Path | None = None
    """Append the table (with the command line) to this Markdown file."""


def model_policy(size: str, setting: ServerSetting, workdir: Path):
    """A real π0.5 of ``size`` (random weights, seeded) behind the LIBERO pipeline, loaded as a checkpoint is, set
    up as ``setting`` says (pruning, prompt trimming, compilation with the serving buckets)."""
    import torch

    from openpi.envs import shapes_dataset
    from openpi.models import pi0_config
    from openpi.models_pytorch import weights
    from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
    from openpi.policies import libero_policy, policy_config
    from openpi.shared import normalize
    from openpi.training import config as _config

    make = {"tiny": pi0_config.tiny_config, "mid": pi0_config.mid_config}[size]
    ratio = setting.keep_ratio
    pruning = {"token_pruning_enabled": True, "token_prune_keep_ratio": ratio} if ratio else {}
    model = make(action_horizon=10, prompt_trim_multiple=16 if setting.trim else None, **pruning)
    data = libero_policy.LeRobotLiberoDataConfig(tokenizer_path=str(shapes_dataset.prepare_tokenizer()))
    train_config = dataclasses.replace(_config.get_config("pi05_libero_pytorch"), model=model, data=data)
    torch.manual_seed(0)
    weights.save_weights(PI0Pytorch(model), workdir)
    if setting.compiled:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import serve_policy

        serve_args = serve_policy.Args(compile_mode="default", max_batch=setting.max_batch)
        train_config = serve_policy.with_compile(train_config, serve_args.compile_mode)
        buckets = serve_policy.batch_buckets(serve_args)
    else:
        buckets = None
    stats = normalize.NormStats(mean=np.zeros(8), std=np.ones(8), q01=-np.ones(8), q99=np.ones(8))
    actions = normalize.NormStats(mean=np.zeros(7), std=np.ones(7), q01=-np.ones(7), q99=np.ones(7))
    normalize.save(workdir / "assets" / data.repo_id, {"state": stats, "actions": actions})
    return policy_config.create_trained_policy(train_config, workdir, pytorch_device="cpu", batch_buckets=buckets)


def _serve(args: Args, setting: ServerSetting, port_queue: multiprocessing.Queue, stop: threading.Event) -> None:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        if args.model == "synthetic":
            policy, warmup = SyntheticPolicy(args.infer_ms), None
        else:
            policy = model_policy(args.model, setting, Path(workdir))
            warmup = policy.warmup if setting.compiled else None
        server = WebsocketPolicyServer(policy, LOOPBACK, 0, max_batch=setting.max_batch, warmup=warmup)
        with server.running_in_background() as port:
            while not server.ready:  # compiled: the warm-up compiles every batch bucket first
                time.sleep(0.1)
            port_queue.put(port)
            stop.wait()
        if setting.compiled:
            logger.info(
                "%s: torch.compile built %d graphs", setting, torch._dynamo.utils.counters["stats"]["unique_graphs"]
            )


@contextlib.contextmanager
def server_process(args: Args, setting: ServerSetting) -> Iterator[int]:
    """Runs the server in a child process (its own GIL); yields its port once it is ready."""
    context = multiprocessing.get_context("spawn")
    port_queue, stop = context.Queue(), context.Event()
    process = context.Process(target=_serve, args=(args, setting, port_queue, stop), daemon=True)
    process.start()
    try:
        yield port_queue.get(timeout=600)
    finally:
        stop.set()
        process.join(timeout=REPLY_TIMEOUT_S)


def main(args: Args) -> None:
    rows = []
    for spec in args.servers:
        with server_process(args, ServerSetting.parse(spec)) as port:
            run_load(port, 1, 2, args.seed, check_ids=False)  # warm-up
            for num_clients in args.clients:
                result = run_load(port, num_clients, args.requests, args.seed, check_ids=args.model == "synthetic")
                if result.errors or result.completed != result.expected:
                    raise RuntimeError(f"{num_clients} clients: lost or failed requests: {result.errors[:5]}")
                label = spec
                rows.append(markdown_row(label, num_clients, args.requests, result))
                logger.info("%s, %d clients: %.1f req/s", label, num_clients, result.completed / result.wall_s)
    table = "\n".join([MARKDOWN_HEADER, *rows])
    print(table)
    if args.output is not None:
        command = "uv run scripts/bench/bench_serving.py " + " ".join(sys.argv[1:])
        with args.output.open("a") as f:
            f.write(f"\n```\n{command}\n```\n\n{table}\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main(tyro.cli(Args))
