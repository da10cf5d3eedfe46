"""Training one research policy in a worker process with the package's trainer, recorded for a results folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def train_policy(config: Any, threads: int) -> dict[str, Any]:
    """Trains ``config`` (a ``TrainConfig``) on ``threads`` torch threads; returns its checkpoint, final loss, wall
    time and thread count (training is not bit-reproducible across thread counts: a retrain with other threads is
    another policy)."""
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
        "threads": threads,
    }
