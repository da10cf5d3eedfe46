"""Withholding the named target's patches (research/lightvla/withholding.py): the pruner never keeps them and fills
its budget from the others; the policy wrapper withholds them at every inference, or only while the target is far."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from openpi.envs import rollout
from openpi.envs.shapes import ShapesEnv
from openpi.evaluation import closed_loop
from openpi.evaluation.random_patches import use_random_patches
from openpi.models.pi0_config import tiny_config
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.token_pruner import ImageTokenPruner
from openpi.training import config as _config
from research.lightvla import withholding
from tests.helpers.models import randomized

NUM_PATCHES = 48


def _inputs(batch: int = 2):
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, NUM_PATCHES, 32, generator=gen),
        torch.randn(batch, 8, 32, generator=gen),
        torch.ones(batch, 8, dtype=torch.bool),
        torch.ones(batch, NUM_PATCHES, dtype=torch.bool),
        torch.arange(NUM_PATCHES).expand(batch, -1),
    )


def _kept_sets(out) -> list[set[int]]:
    return [set(out.kept_indices[b][out.mask[b]].tolist()) for b in range(out.mask.shape[0])]


@pytest.mark.parametrize(
    "budget",
    [{"token_prune_keep_ratio": 0.25}, {"token_prune_keep_tokens": 40}, {"token_prune_keep_ratio": 1.0}, {}],
    ids=["ratio25", "tokens40", "every_patch", "union"],
)
def test_withheld_patches_are_never_kept_and_a_budget_is_refilled_from_the_others(budget):
    config = tiny_config(token_pruning_enabled=True, token_prune_center_patches=False, **budget)
    inputs = _inputs()
    free = _kept_sets(ImageTokenPruner(config).eval()(*inputs))
    pruner = withholding.TargetWithholdingPruner(config).eval()
    assert _kept_sets(pruner(*inputs)) == free  # nothing withheld: the learned selection
    withheld = torch.zeros(NUM_PATCHES, dtype=torch.bool)
    withheld[sorted(free[0])[:3]] = True  # three patches the selection keeps in sample 0
    withheld_set = set(withheld.nonzero().flatten().tolist())
    pruner.withheld = withheld
    out = pruner(*inputs)
    for kept, kept_free in zip(_kept_sets(out), free, strict=True):
        assert not kept & withheld_set
        if budget:  # the budget counts every valid patch and is filled from the next-ranked ones, as far as they go
            assert len(kept) == min(len(kept_free), NUM_PATCHES - 3)
            assert kept_free - kept <= withheld_set
        else:  # the union keeps its other votes
            assert kept == kept_free - withheld_set
    random = withholding.RandomOffTargetPruner(config, torch.Generator().manual_seed(0)).eval()
    random.withheld = withheld
    drawn = random(*inputs)
    assert torch.equal(drawn.mask.sum(1), out.mask.sum(1))
    assert not any(kept & withheld_set for kept in _kept_sets(drawn))


def test_random_subset_draws_the_count_from_the_allowed_patches_reproducibly():
    allowed = torch.tensor([[True, True, False, True, True], [False, True, True, False, False]])
    draw = withholding.random_subset(allowed, torch.tensor([3, 1]), torch.Generator().manual_seed(0))
    assert draw.sum(dim=1).tolist() == [3, 1] and not (draw & ~allowed).any()
    again = withholding.random_subset(allowed, torch.tensor([3, 1]), torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)


_registered = _config.get_config


def _small(name: str) -> _config.TrainConfig:
    """The registered config with a two-episode dataset (quick to generate)."""
    config = _registered(name)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, num_episodes=2, episode_length=3))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, embedded_data_home) -> Path:
    """Random weights of the LightVLA testbed config, saved as a checkpoint."""
    directory = tmp_path_factory.mktemp("testbed") / "checkpoint"
    weights.save_weights(randomized(PI0Pytorch(_small("pi05_shapes_lightvla").model)), directory)
    return directory


def _policy(checkpoint: Path, **options):
    args = closed_loop.Args(closed_loop.PolicyArgs("pi05_shapes_lightvla", str(checkpoint)), episodes=3, **options)
    return args, closed_loop.load_policy(args, _small("pi05_shapes_lightvla"))


def test_the_wrapper_replaces_the_pruner_keeping_its_settings_and_the_random_control(checkpoint):
    _, policy = _policy(checkpoint, token_prune_keep_tokens=7)
    policy.model.set_token_pruner_collect_stats(True)
    mode = policy.model.pruner.training
    learned = withholding.use_target_withholding(policy.model)
    assert type(learned) is withholding.TargetWithholdingPruner and policy.model.pruner is learned
    assert (learned.keep_tokens, learned.collect_stats, learned.training) == (7, True, mode)
    generator = torch.Generator().manual_seed(3)
    use_random_patches(policy.model, generator)
    random = withholding.use_target_withholding(policy.model)
    assert isinstance(random, withholding.RandomOffTargetPruner) and random.generator is generator
    assert random.keep_tokens == 7


def test_withholding_keeps_every_patch_but_the_targets(checkpoint):
    args, policy = _policy(checkpoint, token_prune_keep_ratio=1.0)
    every = closed_loop.evaluate(args, _small("pi05_shapes_lightvla"), policy)
    others = withholding.evaluate_withholding(args, _small("pi05_shapes_lightvla"), policy, only_when_far=False)
    assert every["target_recall"] == 1.0 and others["target_recall"] == 0.0 and others["target_hit_rate"] == 0.0
    assert others["kept_tokens_mean"] < every["kept_tokens_mean"] and others["episodes"] == 3


def test_withholding_when_far_withholds_the_target_only_while_it_is_far(checkpoint, monkeypatch):
    offsets = iter([0.9, 0.0])  # far, then near
    monkeypatch.setattr(rollout, "target_offset", lambda env: next(offsets))
    env = ShapesEnv(_small("pi05_shapes_lightvla").data.spec.task)
    observation = env.reset(0)
    _, policy = _policy(checkpoint, token_prune_keep_ratio=1.0)
    withholding.use_target_withholding(policy.model)
    grid = rollout.PatchGrid(112, 14)
    wrapped = withholding.TargetWithholdingPolicy(policy, env, grid, only_when_far=True)
    target = grid.object_patches(env.masks())[env.scene.target]
    far, near = (wrapped.infer(observation)["kept_patch_mask"] for _ in range(2))
    assert target.any() and not far[target].any() and near[target].all()
