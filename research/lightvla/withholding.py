"""Withholding the named target's patches from the pruner: does the policy need them?

Target recall counts the target's patches in the kept set; this control asks whether the policy needs them. At each
inference the pruner may not keep any patch of the object the prompt names (both cameras, from the env's object
masks); the withheld patches still vote and a budget still counts every valid patch, so the budget is filled from the
next-ranked patches. With ``far`` they are withheld only while the target's centre lies outside the wrist camera's
view (:func:`openpi.envs.rollout.target_offset` at least ``NEAR_DISTANCE``), where only the third-person camera shows
the way. Evaluation only, in process (the env's masks are read at every inference).
"""

from __future__ import annotations

import dataclasses

import torch

from openpi.envs import rollout
from openpi.envs.shapes import ShapesEnv
from openpi.evaluation import closed_loop
from openpi.evaluation.random_patches import RandomPatchPruner
from openpi.models.pi0_config import Pi0Config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.token_pruner import ImageTokenPruner, select_kept
from openpi.policies.policy import Policy
from openpi.training import config as _config


class TargetWithholdingPruner(ImageTokenPruner):
    """The learned eval selection, ranked among the patches not in ``withheld``.

    Attributes:
        withheld: ``[N]`` or ``[B, N]`` bool, the patches the selection may not keep; None withholds nothing.
    """

    def __init__(self, config: Pi0Config):
        super().__init__(config)
        self.withheld: torch.Tensor | None = None

    def selectable(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` bool: the valid patches that are not withheld."""
        if self.withheld is None:
            return patch_mask
        return patch_mask & ~self.withheld.to(patch_mask.device).expand_as(patch_mask)

    def keep_mask(self, scores: torch.Tensor, votes: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        return select_kept(scores, votes, patch_mask, self.budget(patch_mask), self.selectable(patch_mask))


class RandomOffTargetPruner(TargetWithholdingPruner):
    """As many patches as :class:`TargetWithholdingPruner` keeps, uniformly at random among the selectable ones: the
    random control of a withheld evaluation."""

    def __init__(self, config: Pi0Config, generator: torch.Generator | None = None):
        super().__init__(config)
        self.generator = generator

    def keep_mask(self, scores: torch.Tensor, votes: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        counts = super().keep_mask(scores, votes, patch_mask).sum(dim=1)  # [B]
        return random_subset(self.selectable(patch_mask), counts, self.generator)


def random_subset(allowed: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``[B, N]`` bool: ``counts[b]`` of the ``allowed`` patches of sample b, uniformly at random (the draw of
    :class:`openpi.evaluation.random_patches.RandomPatchPruner`)."""
    device = allowed.device if generator is None else generator.device
    noise = torch.rand(allowed.shape, generator=generator, device=device).to(allowed.device)
    order = noise.masked_fill(~allowed, -1.0).argsort(dim=1, descending=True)  # allowed patches first
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return ranks < counts[:, None]


def use_target_withholding(model: PI0Pytorch) -> TargetWithholdingPruner:
    """Replaces ``model``'s pruner by a withholding one with its budgets, noise, telemetry switch and mode: a
    :class:`RandomOffTargetPruner` (with the same generator) in place of a random-patch control, else a
    :class:`TargetWithholdingPruner`."""
    current = model.pruner
    if isinstance(current, RandomPatchPruner):
        pruner: TargetWithholdingPruner = RandomOffTargetPruner(model.config, current.generator)
    else:
        pruner = TargetWithholdingPruner(model.config)
    pruner.train(current.training)
    for setting in ("noise_scale", "keep_tokens", "keep_ratio", "collect_stats"):
        setattr(pruner, setting, getattr(current, setting))
    model.token_pruner = pruner
    return pruner


@dataclasses.dataclass
class TargetWithholdingPolicy:
    """An in-process pruning policy whose pruner, before every inference (``only_when_far``: those with the target
    outside the wrist camera's view), is told the patches of the target ``env``'s prompt names."""

    policy: Policy
    env: ShapesEnv
    grid: rollout.PatchGrid
    only_when_far: bool = False

    def infer(self, obs: dict, **kwargs) -> dict:
        withheld = None
        if not self.only_when_far or rollout.target_offset(self.env) >= rollout.NEAR_DISTANCE:
            withheld = torch.from_numpy(self.grid.object_patches(self.env.masks())[self.env.scene.target])  # [N]
        self.policy.model.pruner.withheld = withheld
        return self.policy.infer(obs, **kwargs)


def evaluate_withholding(
    args: closed_loop.Args, train_config: _config.TrainConfig, policy: Policy, only_when_far: bool
) -> dict:
    """:func:`openpi.evaluation.closed_loop.evaluate` on the same held-out scenes with the target's patches withheld
    (no prompt-swap test: the withheld pruner cannot keep the named object)."""
    use_target_withholding(policy.model)
    env = ShapesEnv(train_config.data.spec.task)
    vision = train_config.model.vision_config
    grid = rollout.PatchGrid(vision.image_size, vision.patch_size)
    withholding = TargetWithholdingPolicy(policy, env, grid, only_when_far)
    results = [
        rollout.run_episode(env, withholding, seed, replan_steps=args.replan_steps, grid=grid)
        for seed in closed_loop.held_out_seeds(args.episodes, args.seed)
    ]
    return rollout.summarize(results)
