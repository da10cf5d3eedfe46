"""Closed-loop evaluation (openpi.evaluation.closed_loop): its summary, masking, random patches, budgets, the websocket
path; and the pruning pictures of scripts/visualize_pruning.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openpi.cli import visualize_pruning
from openpi.envs import shapes_dataset
from openpi.envs.shapes import ShapesEnv, ShapesTask
from openpi.evaluation import closed_loop
from openpi.evaluation.random_patches import RandomPatchPruner, use_random_patches
from openpi.models.pi0_config import tiny_config
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.token_pruner import ImageTokenPruner
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from openpi.training import config as _config
from tests.helpers.models import randomized

SUMMARY_KEYS = {
    "success_rate",
    "ci95",
    "episodes",
    "mean_steps",
    "kept_tokens_mean",
    "kept_ratio_mean",
    "target_recall",
    "target_pixel_recall",
    "target_hit_rate",
    "kept_on_object",
    "infer_ms_p50",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, embedded_data_home) -> Path:
    """Random weights of the LightVLA testbed config (a small dataset), saved as a checkpoint."""
    directory = tmp_path_factory.mktemp("testbed") / "checkpoint"
    weights.save_weights(randomized(PI0Pytorch(_small("pi05_shapes_lightvla").model)), directory)
    return directory


_registered = _config.get_config  # the fixtures below patch get_config with _small


def _small(name: str) -> _config.TrainConfig:
    """The registered config with a two-episode dataset (quick to generate)."""
    config = _registered(name)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, num_episodes=2, episode_length=3))


@pytest.fixture
def small_configs(monkeypatch):
    monkeypatch.setattr(closed_loop._config, "get_config", _small)


def _args(checkpoint: Path, **overrides) -> closed_loop.Args:
    policy = closed_loop.PolicyArgs("pi05_shapes_lightvla", str(checkpoint))
    return closed_loop.Args(policy=policy, episodes=3, **overrides)


def _policy(checkpoint: Path, **overrides):
    return closed_loop.load_policy(_args(checkpoint, **overrides), _small("pi05_shapes_lightvla"))


def test_the_summary_and_the_progress_line(small_configs, checkpoint, capsys):
    printed = closed_loop.run(_args(checkpoint, prompt_swap=2))
    assert set(printed) >= SUMMARY_KEYS and json.loads(json.dumps(printed)) == printed
    assert printed["episodes"] == 3 and 0.0 <= printed["success_rate"] <= 1.0
    progress = capsys.readouterr().err  # tqdm: episodes done, elapsed and ETA, the success so far
    assert "3/3 [" in progress and f"success={round(printed['success_rate'] * 3)}/3" in progress
    low, high = printed["ci95"]
    assert 0.0 <= low <= printed["success_rate"] <= high <= 1.0
    assert printed["kept_tokens_mean"] > 0 and 0.0 <= printed["target_recall"] <= 1.0
    assert printed["kept_share_image"] + printed["kept_share_wrist_image"] == pytest.approx(1.0)
    assert printed["target_in_view_image"] == 1.0  # the third-person camera sees the whole table
    assert set(printed["prompt_swap"]) == {
        "recall_named_target",
        "recall_other_before_swap",
        "recall_after_swap",
        "kept_set_changed",
        "success_after_swap",
        "episode_recall_after_swap",
    }


def test_budget_and_random_keep_keep_the_same_count(small_configs, checkpoint):
    learned = closed_loop.run(_args(checkpoint, token_prune_keep_tokens=10))
    random = closed_loop.run(_args(checkpoint, token_prune_keep_tokens=10, random_keep=True))
    assert learned["kept_tokens_mean"] == random["kept_tokens_mean"] == 10
    assert random["target_recall"] != learned["target_recall"]


def test_held_out_seeds_are_disjoint_streams_per_evaluation_seed():
    first, second = closed_loop.held_out_seeds(100, 0), closed_loop.held_out_seeds(100, 1)
    assert len(set(first)) == 100 and not set(first) & set(second)
    assert min(first) >= closed_loop.rollout.HELD_OUT_SEED_BASE


def _inputs(batch: int = 3, num_patches: int = 48):
    gen = torch.Generator().manual_seed(0)
    patch_mask = torch.ones(batch, num_patches, dtype=torch.bool)
    patch_mask[1, num_patches // 2 :] = False  # an absent camera in sample 1
    positions = torch.arange(num_patches).expand(batch, -1)
    task_mask = torch.ones(batch, 8, dtype=torch.bool)
    return (
        torch.randn(batch, num_patches, 32, generator=gen),
        torch.randn(batch, 8, 32, generator=gen),
        task_mask,
        patch_mask,
        positions,
    )


@pytest.mark.parametrize("budget", [{"token_prune_keep_ratio": 0.25}, {}], ids=["ratio25", "union"])
def test_random_patches_keep_as_many_valid_patches_as_the_learned_selection(budget):
    config = tiny_config(token_pruning_enabled=True, **budget)
    inputs = _inputs()
    learned = ImageTokenPruner(config).eval()(*inputs)
    random_pruner = RandomPatchPruner(config, torch.Generator().manual_seed(0)).eval()
    random = random_pruner(*inputs)
    assert torch.equal(random.mask.sum(1), learned.mask.sum(1))
    chosen = [set(random.kept_indices[b][random.mask[b]].tolist()) for b in range(3)]
    assert all(i < 24 for i in chosen[1]), "never an absent camera's patch"
    assert chosen != [set(learned.kept_indices[b][learned.mask[b]].tolist()) for b in range(3)]
    assert torch.equal(random_pruner.last_selection.kept_indices, random.kept_indices)


def test_use_random_patches_keeps_the_models_budget_and_telemetry(checkpoint):
    model = PI0Pytorch(_small("pi05_shapes_lightvla").model)
    model.set_token_pruner_keep_tokens(7)
    model.set_token_pruner_collect_stats(True)
    use_random_patches(model)
    assert isinstance(model.pruner, RandomPatchPruner)
    assert (model.pruner.keep_tokens, model.pruner.collect_stats, model.pruner.training) == (7, True, True)
    model.eval()
    use_random_patches(model)
    assert not model.pruner.training


def test_mask_images_really_masks(small_configs, checkpoint):
    env = ShapesEnv(ShapesTask(image_size=112))
    first = env.reset(0)
    other = dict(first, **{k: v for k, v in env.reset(1).items() if k.endswith("image")})  # other scene's images
    noise = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    seeing, blind = _policy(checkpoint), _policy(checkpoint, mask_images=True)
    seeing_actions = [seeing.infer(obs, noise=noise)["actions"] for obs in (first, other)]
    assert not np.array_equal(*seeing_actions), "the images reach the actions"
    np.testing.assert_array_equal(
        blind.infer(first, noise=noise)["actions"], blind.infer(other, noise=noise)["actions"]
    )


def test_evaluates_a_served_policy(small_configs, checkpoint):
    server = WebsocketPolicyServer(_policy(checkpoint), host="127.0.0.1", port=0)
    with server.running_in_background() as port:
        summary = closed_loop.run(_args(checkpoint, host="127.0.0.1", port=port))
        rtc = closed_loop.run(_args(checkpoint, host="127.0.0.1", port=port, run_async=True, rtc="guided"))
    assert summary["episodes"] == 3 and summary["kept_tokens_mean"] > 0, "kept patches travel over the websocket"
    assert rtc["episodes"] == 3 and rtc["within_chunk_discontinuity"] is not None, "the async runtime drove it"
    with pytest.raises(ValueError, match="set on the server"):
        closed_loop.run(_args(checkpoint, host="127.0.0.1", port=port, random_keep=True))


def test_visualize_pruning_writes_a_picture_per_camera(checkpoint, tmp_path, monkeypatch):
    shapes_dataset.prepare_tokenizer()  # the policy's pipeline reads it
    monkeypatch.setattr(visualize_pruning._config, "get_config", _small)
    args = visualize_pruning.Args(closed_loop.PolicyArgs("pi05_shapes_lightvla", str(checkpoint)), output_dir=tmp_path)
    paths = visualize_pruning.draw(args)
    assert len(paths) == 2
    for path in paths:
        picture = np.asarray(Image.open(path))
        assert picture.shape[0] == 112 * 3 and picture.shape[1] > 3 * 112 * 3, "frame | kept patches | votes"
        assert picture.std() > 10, "not a blank picture"
