"""The random-patch control of a pruning evaluation: as many patches as the learned selection keeps, at random."""

from __future__ import annotations

import torch

from openpi.models.pi0_config import Pi0Config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.token_pruner import ImageTokenPruner


class RandomPatchPruner(ImageTokenPruner):
    """Keeps, per sample, as many patches as :class:`ImageTokenPruner` would (its budget, or the size of the votes'
    union), chosen uniformly at random among the valid ones. The votes and telemetry are the learned pruner's."""

    def __init__(self, config: Pi0Config, generator: torch.Generator | None = None):
        super().__init__(config)
        self.generator = generator

    def keep_mask(self, scores: torch.Tensor, votes: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        counts = super().keep_mask(scores, votes, patch_mask).sum(dim=1)  # [B]
        device = patch_mask.device if self.generator is None else self.generator.device
        noise = torch.rand(patch_mask.shape, generator=self.generator, device=device).to(patch_mask.device)
        order = noise.masked_fill(~patch_mask, -1.0).argsort(dim=1, descending=True)  # valid patches first
        ranks = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
        )
        return ranks < counts[:, None]


def use_random_patches(model: PI0Pytorch, generator: torch.Generator | None = None) -> None:
    """Replaces ``model``'s pruner by a :class:`RandomPatchPruner` with its current budgets, noise, telemetry switch
    and mode."""
    learned = model.pruner
    random = RandomPatchPruner(model.config, generator).train(learned.training)
    for setting in ("noise_scale", "keep_tokens", "keep_ratio", "collect_stats"):
        setattr(random, setting, getattr(learned, setting))
    model.token_pruner = random
