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

import torch
import tyro

from openpi.cli.random_policies import ServerSetting, model_policy
from openpi.serving.load_test import LOOPBACK, MARKDOWN_HEADER, REPLY_TIMEOUT_S, SyntheticPolicy, markdown_row, run_load
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from openpi.shared import results_file

logger = logging.getLogger(__name__)


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
    """Write the table (with the command line) into this Markdown file; a new run of the same command replaces it."""


def _serve(args: Args, setting: ServerSetting, port_queue: multiprocessing.Queue, stop: threading.Event) -> None:
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
        results_file.write_run(args.output, command, ["```", command, "```", "", table])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main(tyro.cli(Args))
