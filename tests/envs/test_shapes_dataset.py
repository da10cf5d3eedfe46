"""The embedded synthetic dataset: prepared once into the cache by an explicit step (a function and its script),
LeRobot-readable, and solvable only by vision."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex

import numpy as np
import pytest
import tyro

from openpi.cli import generate_shapes_dataset
from openpi.envs import shapes, shapes_dataset
from openpi.models import tokenizer as _tokenizer
from openpi.shared import normalize
from openpi.training import config as _config

SPEC = shapes_dataset.EmbeddedDatasetSpec(num_episodes=3, episode_length=6, image_size=32, seed=1)


@pytest.fixture(scope="module")
def dataset_root(embedded_data_home):
    return shapes_dataset.prepare(SPEC).root


def test_prepare_caches_in_a_versioned_folder_and_is_idempotent(dataset_root, embedded_data_home, monkeypatch):
    assert dataset_root == embedded_data_home / "embedded_dataset" / shapes_dataset.VERSION / SPEC.folder_name
    assert not [p for p in dataset_root.parent.iterdir() if ".tmp-" in p.name]

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(shapes_dataset, "_write_dataset", fail)
    monkeypatch.setattr(shapes_dataset._tokenizer, "train_sentencepiece", fail)
    again = shapes_dataset.prepare(SPEC)
    assert again == shapes_dataset.PreparedDataset(dataset_root, shapes_dataset.tokenizer_path())
    assert shapes_dataset.is_generated(SPEC) and again.tokenizer.is_file()


def test_the_script_prepares_the_spec_its_command_names(embedded_data_home, capsys):
    spec = shapes_dataset.EmbeddedDatasetSpec(
        num_episodes=2, episode_length=3, image_size=16, seed=5, shared_attributes=True, action_space="position"
    )
    command = shlex.split(shapes_dataset.generate_command(spec))
    assert command[:3] == ["uv", "run", shapes_dataset.GENERATE_SCRIPT]
    args = tyro.cli(generate_shapes_dataset.Args, args=command[3:])
    assert args.spec == spec and not shapes_dataset.is_generated(spec)
    generate_shapes_dataset.generate(args)
    out = capsys.readouterr().out
    assert shapes_dataset.is_generated(spec)
    assert str(shapes_dataset.dataset_dir(spec)) in out and "Prepared in" in out
    tokenizer_only = tyro.cli(generate_shapes_dataset.Args, args=shlex.split(shapes_dataset.generate_command())[3:])
    assert tokenizer_only.tokenizer_only


def test_the_script_takes_a_config_name():
    spec = generate_shapes_dataset.resolve_spec(generate_shapes_dataset.Args(config_name="pi05_shapes_lightvla"))
    assert spec == _config.get_config("pi05_shapes_lightvla").data.spec and spec.num_episodes == 3000
    with pytest.raises(ValueError, match="does not train on the shapes dataset"):
        generate_shapes_dataset.resolve_spec(generate_shapes_dataset.Args(config_name="pi05_libero_pytorch"))
    with pytest.raises(ValueError, match="not both"):
        generate_shapes_dataset.resolve_spec(
            generate_shapes_dataset.Args(spec=SPEC, config_name="pi05_shapes_lightvla")
        )


def test_dataset_reads_back_with_lerobot_and_libero_features(dataset_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(shapes_dataset.REPO_ID, root=dataset_root)
    assert len(dataset) == SPEC.num_episodes * SPEC.episode_length
    item = dataset[0]
    assert tuple(item["image"].shape) == (3, 32, 32)
    assert tuple(item["wrist_image"].shape) == (3, 32, 32)
    assert tuple(item["state"].shape) == (8,) and tuple(item["actions"].shape) == (7,)
    assert item["task"].startswith("move to the ")
    info = json.loads((dataset_root / "meta" / "info.json").read_text())
    data_features = {k for k in info["features"] if k not in ("timestamp", "frame_index", "episode_index", "index")}
    assert data_features == {"image", "wrist_image", "state", "actions", "task_index"}  # no target column


def test_norm_stats_match_the_generated_frames(dataset_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(shapes_dataset.REPO_ID, root=dataset_root)
    actions = np.stack([dataset.hf_dataset[i]["actions"].numpy() for i in range(len(dataset))])
    stats = normalize.load(dataset_root)
    np.testing.assert_allclose(stats["actions"].mean, actions.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["actions"].std, actions.std(0), atol=1e-5)


def test_tokenizer_fits_the_debug_vocabulary(dataset_root):
    tokenizer = _tokenizer.PaligemmaTokenizer(200, shapes_dataset.tokenizer_path())
    assert tokenizer.vocab_size <= 1024
    ids, mask = tokenizer.tokenize("move to the blue circle", np.zeros(8))
    assert tokenizer.decode(ids[mask]).startswith("Task: move to the blue circle, State:")


def test_target_is_only_visible_in_the_image():
    rng = np.random.default_rng(0)
    scene = shapes.sample_scene(rng)
    target = scene.objects[scene.target]
    # Same prompt and end effector, target moved elsewhere: the action changes, state and prompt cannot tell.
    moved = shapes.Scene(
        tuple(shapes.SceneObject(o.color, o.shape, (1.0 - o.center[0], 1.0 - o.center[1])) for o in scene.objects),
        scene.target,
    )
    effector = np.array([0.5, 0.5])
    assert moved.prompt == scene.prompt
    action_a = shapes.expert_action(scene, effector)
    action_b = shapes.expert_action(moved, effector)
    assert np.abs(action_a[:2] - action_b[:2]).max() > 0.5
    image_a, _ = shapes.render_frame(shapes.render_table(scene, 64), effector)
    image_b, _ = shapes.render_frame(shapes.render_table(moved, 64), effector)
    # The named object is drawn in its colour at its position.
    for image, obj in ((image_a, target), (image_b, moved.objects[moved.target])):
        x, y = (int(v * 64) for v in obj.center)
        np.testing.assert_array_equal(image[y, x], shapes.COLORS[obj.color])


def test_actions_step_toward_target_and_close_gripper_on_arrival():
    spec = shapes_dataset.EmbeddedDatasetSpec(num_episodes=1, episode_length=20, image_size=32)
    frames = list(shapes_dataset.generate_episode(np.random.default_rng(3), spec))
    assert all(np.all(np.abs(f["actions"][:2]) <= 1.0) for f in frames)
    assert frames[0]["actions"][-1] == -1.0 and frames[-1]["actions"][-1] == 1.0
    distances = [np.abs(f["actions"][:2]).sum() for f in frames]
    assert distances[-1] < distances[0]
    assert np.any(frames[0]["wrist_image"] != frames[-1]["wrist_image"])


def test_position_actions_record_the_targets_position_in_their_own_folder():
    spec = shapes_dataset.EmbeddedDatasetSpec(num_episodes=1, episode_length=20, image_size=32, action_space="position")
    assert spec.folder_name != dataclasses.replace(spec, action_space="delta").folder_name
    rng = np.random.default_rng(3)
    frames = list(shapes_dataset.generate_episode(rng, spec))
    scene = shapes.sample_scene(np.random.default_rng(3), spec.task)  # the episode's scene: its first draw
    target = scene.objects[scene.target].center
    np.testing.assert_allclose([f["actions"][:2] for f in frames], [target] * len(frames), atol=1e-7)
    assert frames[0]["actions"][-1] == -1.0 and frames[-1]["actions"][-1] == 1.0


def test_a_killed_generation_leaves_no_partial_copy_behind(embedded_data_home):
    spec = shapes_dataset.EmbeddedDatasetSpec(num_episodes=2, episode_length=3, image_size=16, seed=7)
    root = shapes_dataset.dataset_dir(spec)
    root.parent.mkdir(parents=True, exist_ok=True)
    dead = root.parent / f".{root.name}.tmp-999999999-abc"  # no such process
    alive = root.parent / f".{root.name}.tmp-{os.getpid()}-def"  # a generation still running (this process)
    dead.mkdir()
    alive.mkdir()
    assert shapes_dataset.prepare(spec).root == root
    assert not dead.exists() and alive.exists()
