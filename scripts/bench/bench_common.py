"""Pieces the benchmark scripts share: a timed-or-measured training step on fixed inputs, the resident set size, and
writing a run into its results file."""

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


RUN_END = "<!-- end of run -->"


def write_run(output: Path, command: str, lines: list[str]) -> None:
    """Writes one run's section (``lines``: its header, command and table) into the results file ``output``. A new
    run replaces the old table: the section an earlier run of the same ``command`` wrote (between
    ``<!-- run: COMMAND -->`` and :data:`RUN_END`) is replaced, another command's section is appended. The text around
    the sections (the reading) is kept; revise it when the numbers change."""
    start = f"<!-- run: {command.strip()} -->"
    section = "\n".join([start, *lines, "", RUN_END])
    text = output.read_text() if output.is_file() else ""
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(RUN_END, 1)[1]
    else:
        text = f"{text.rstrip()}\n\n{section}\n" if text.strip() else f"{section}\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
