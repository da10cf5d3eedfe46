"""scripts/eval_closed_loop.py: its JSON summary, masking, random keep, budgets, and the websocket path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openpi.envs import shapes_dataset
from openpi.envs.shapes import ShapesEnv, ShapesTask
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from openpi.training import config as _config
from tests.model_helpers import randomized
from tests.script_loader import load_script

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


def _script():
    return load_script("scripts/eval_closed_loop.py")


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
def script(monkeypatch):
    module = _script()
    monkeypatch.setattr(module._config, "get_config", _small)
    return module


def _args(script, checkpoint: Path, **overrides):
    return script.Args(policy=script.PolicyArgs("pi05_shapes_lightvla", str(checkpoint)), episodes=3, **overrides)


def test_the_last_line_is_the_json_summary(script, checkpoint, capsys):
    summary = script.main(_args(script, checkpoint, prompt_swap=2))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == summary and set(printed) >= SUMMARY_KEYS
    assert printed["episodes"] == 3 and 0.0 <= printed["success_rate"] <= 1.0
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
    }


def test_budget_and_random_keep_keep_the_same_count(script, checkpoint, capsys):
    learned = script.main(_args(script, checkpoint, token_prune_keep_tokens=10))
    random = script.main(_args(script, checkpoint, token_prune_keep_tokens=10, random_keep=True))
    assert learned["kept_tokens_mean"] == random["kept_tokens_mean"] == 10


def test_exclude_target_keeps_every_patch_but_the_targets(script, checkpoint, capsys):
    every = script.main(_args(script, checkpoint, token_prune_keep_ratio=1.0))
    others = script.main(_args(script, checkpoint, token_prune_keep_ratio=1.0, exclude_target=True))
    assert every["target_recall"] == 1.0 and others["target_recall"] == 0.0 and others["target_hit_rate"] == 0.0
    assert others["kept_tokens_mean"] < every["kept_tokens_mean"]
    with pytest.raises(ValueError, match="in process"):
        script.main(_args(script, checkpoint, exclude_target=True, host="127.0.0.1"))


def test_exclude_target_when_far_withholds_the_target_only_while_it_is_far(script, checkpoint, monkeypatch):
    offsets = iter([0.9, 0.0])  # far, then near
    monkeypatch.setattr(script.rollout, "target_offset", lambda env: next(offsets))
    env = ShapesEnv(_small("pi05_shapes_lightvla").data.spec.task)
    observation = env.reset(0)
    policy = script._in_process(_args(script, checkpoint, token_prune_keep_ratio=1.0), _small("pi05_shapes_lightvla"))
    grid = script.rollout.PatchGrid(112, 14)
    excluding = script.TargetExcludingPolicy(policy, env, grid, only_when_far=True)
    target = grid.object_patches(env.masks())[env.scene.target]
    far, near = (excluding.infer(observation)["kept_patch_mask"] for _ in range(2))
    assert target.any() and not far[target].any() and near[target].all()
    with pytest.raises(ValueError, match="exclude-target-when-far"):
        script.main(_args(script, checkpoint, exclude_target_when_far=True))


def test_mask_images_really_masks(script, checkpoint):
    env = ShapesEnv(ShapesTask(image_size=112))
    first = env.reset(0)
    other = dict(first, **{k: v for k, v in env.reset(1).items() if k.endswith("image")})  # other scene's images
    noise = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    train_config = _small("pi05_shapes_lightvla")
    seeing = script._in_process(_args(script, checkpoint), train_config)
    blind = script._in_process(_args(script, checkpoint, mask_images=True), train_config)
    seeing_actions = [seeing.infer(obs, noise=noise)["actions"] for obs in (first, other)]
    assert not np.array_equal(*seeing_actions), "the images reach the actions"
    np.testing.assert_array_equal(
        blind.infer(first, noise=noise)["actions"], blind.infer(other, noise=noise)["actions"]
    )


def test_evaluates_a_served_policy(script, checkpoint, capsys):
    policy = script._in_process(_args(script, checkpoint), _small("pi05_shapes_lightvla"))
    server = WebsocketPolicyServer(policy, host="127.0.0.1", port=0)
    with server.running_in_background() as port:
        summary = script.main(_args(script, checkpoint, host="127.0.0.1", port=port))
    assert summary["episodes"] == 3 and summary["kept_tokens_mean"] > 0, "kept patches travel over the websocket"


def test_visualize_pruning_writes_a_picture_per_camera(checkpoint, tmp_path, monkeypatch):
    shapes_dataset.prepare_tokenizer()  # the policy's pipeline reads it
    module = load_script("scripts/visualize_pruning.py")
    monkeypatch.setattr(module._config, "get_config", _small)
    args = module.Args(module.PolicyArgs("pi05_shapes_lightvla", str(checkpoint)), output_dir=tmp_path)
    paths = module.main(args)
    assert len(paths) == 2
    for path in paths:
        picture = np.asarray(Image.open(path))
        assert picture.shape[0] == 112 * 3 and picture.shape[1] > 3 * 112 * 3, "frame | kept patches | votes"
        assert picture.std() > 10, "not a blank picture"
