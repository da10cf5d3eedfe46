"""Training research policies in worker processes with the package's trainer, each recorded for a results folder as
``train_{arm}_seed{seed}.json`` under the experiment's work dir."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def train_policy(config: Any, threads: int) -> dict[str, Any]:
    """Trains ``config`` (a ``TrainConfig``) on ``threads`` torch threads; returns its checkpoint, final loss, wall
    time, steps, training seed and thread count (training is not bit-reproducible across thread counts: a retrain with
    other threads is another policy)."""
    import torch

    from openpi.training import trainer

    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = trainer.train(config)
    return {
        "checkpoint": str(Path(config.checkpoint_dir) / str(config.num_train_steps)),
        "final_loss": result.history[-1]["loss"],
        "train_minutes": (time.perf_counter() - start) / 60,
        "steps": config.num_train_steps,
        "seed": config.seed,
        "threads": threads,
    }


def record_path(work_dir: Path, arm: str, seed: int) -> Path:
    """Where the record of ``arm`` trained with ``seed`` lives; a training with a record is done."""
    return work_dir / f"train_{arm}_seed{seed}.json"


def train_in_workers(
    pending: list[tuple[str, int]],
    train: Callable[[str, int, int], dict[str, Any]],
    work_dir: Path,
    jobs: int,
    ready: Callable[[str, int], bool] = lambda arm, seed: True,
) -> None:
    """Runs ``train(arm, seed, threads)`` (picklable; it runs in a spawned worker) for each pending (arm, seed),
    ``jobs`` at a time with cores // jobs torch threads each, each once ``ready(arm, seed)`` (its prerequisites are
    trained); writes each record as soon as it exists."""
    pending = list(pending)
    threads = max(1, multiprocessing.cpu_count() // jobs)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        running: dict[concurrent.futures.Future, tuple[str, int]] = {}
        while pending or running:
            startable = [key for key in pending if ready(*key)]
            if not running and not startable:
                raise ValueError(f"Trainings {pending} wait on prerequisites that are neither trained nor pending")
            for arm, seed in startable[: jobs - len(running)]:
                pending.remove((arm, seed))
                running[pool.submit(train, arm, seed, threads)] = (arm, seed)
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                arm, seed = running.pop(future)
                record_path(work_dir, arm, seed).write_text(json.dumps(future.result()))
                print(f"trained {arm} seed {seed}: {future.result()}", flush=True)
