"""Learning-rate schedule and optimizer settings for training."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where an optimizer is built, so that parsing a config does not load it
    import torch


@dataclasses.dataclass(frozen=True)
class CosineDecaySchedule:
    """Linear warmup from ``peak_lr / (warmup_steps + 1)`` to ``peak_lr``, then cosine decay to ``decay_lr``."""

    warmup_steps: int = 1_000
    """Steps of linear warmup to the peak learning rate."""
    peak_lr: float = 2.5e-5
    """Learning rate at the end of the warmup."""
    decay_steps: int = 30_000
    """Step at which the cosine decay reaches decay_lr (counted from step 0)."""
    decay_lr: float = 2.5e-6
    """Learning rate after decay_steps."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.decay_steps <= 0:
            raise ValueError(f"Invalid schedule lengths: warmup={self.warmup_steps}, decay={self.decay_steps}")

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            init_lr = self.peak_lr / (self.warmup_steps + 1)
            return init_lr + (self.peak_lr - init_lr) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.decay_steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.decay_lr + (self.peak_lr - self.decay_lr) * cosine


@dataclasses.dataclass(frozen=True)
class AdamW:
    """AdamW with global gradient-norm clipping (applied by the training loop)."""

    b1: float = 0.9
    """Decay of the first-moment (gradient) average."""
    b2: float = 0.95
    """Decay of the second-moment (squared gradient) average."""
    eps: float = 1e-8
    """Added to the second moment's square root."""
    weight_decay: float = 1e-10
    """Decoupled weight decay."""
    clip_gradient_norm: float = 1.0
    """Clip the global gradient norm to this before each step."""

    def build(self, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
        """Creates the torch optimizer over ``params`` with initial learning rate ``lr``."""
        import torch

        return torch.optim.AdamW(params, lr=lr, betas=(self.b1, self.b2), eps=self.eps, weight_decay=self.weight_decay)
