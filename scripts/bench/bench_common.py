"""Pieces the benchmark scripts share: a timed-or-measured training step on fixed inputs, and the resident set size."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from openpi.models.observation import Observation
from openpi.training import trainer

MIB = 2**20


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, observation: Observation, actions: torch.Tensor, step: int
) -> None:
    """One training step exactly as the trainer runs it (augmentation, forward, backward, clipping, AdamW)."""
    size = model.config.vision_config.image_size
    trainer.train_step(
        model,
        optimizer,
        observation,
        actions,
        lr=1e-5,
        clip_gradient_norm=1.0,
        image_resolution=(size, size),
        generator=trainer.augmentation_generator(0, step, 0),
    )


def rss_mib() -> float:
    """This process's resident set size now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MIB


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB


def append_markdown(output: Path, lines: list[str]) -> None:
    """Appends ``lines`` (a results section: header, command, table) to the Markdown file ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as f:
        f.write("\n".join([*lines, "", ""]))
