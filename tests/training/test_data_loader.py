"""The training data loader: every named config yields model-shaped batches; batches are deterministic per step."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from openpi.envs import shapes_dataset
from openpi.models.batch import IMAGE_KEYS
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.policies import aloha_policy, data_config, droid_policy, libero_policy, mixture, shapes_policy
from openpi.shared import normalize
from openpi.training import config as _config
from openpi.training import data_loader, validation_split
from tests.helpers.fast import fitted_tokenizer
from tests.helpers.lerobot import (
    write_aloha_dataset,
    write_libero_dataset,
    write_tokenizer,
)

BATCH = 4


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("data")
    return {
        "tmp": tmp,
        "tokenizer": str(write_tokenizer(tmp)),
        "libero": write_libero_dataset(tmp / "libero", num_episodes=3, episode_length=6),
        "aloha": write_aloha_dataset(tmp / "aloha", num_episodes=2, episode_length=6),
        "aloha_sim": write_aloha_dataset(tmp / "aloha_sim", num_episodes=2, episode_length=6, cameras=("top",)),
    }


def _local(name: str, datasets: dict, **overrides) -> _config.TrainConfig:
    """The named config pointed at the tiny local datasets, with identity norm stats written where it reads them."""
    config = _config.get_config(name)
    data = config.data
    tmp: Path = datasets["tmp"]
    if isinstance(data, libero_policy.LeRobotLiberoDataConfig):
        data = dataclasses.replace(data, repo_id=str(datasets["libero"].root), tokenizer_path=datasets["tokenizer"])
    elif isinstance(data, aloha_policy.LeRobotAlohaDataConfig):
        assets = data_config.AssetsConfig(str(tmp / "pick_place_assets"), data.assets.asset_id)
        root = datasets["aloha_sim" if data.camera_keys else "aloha"].root
        data = dataclasses.replace(data, repo_id=str(root), tokenizer_path=datasets["tokenizer"], assets=assets)
    elif isinstance(data, droid_policy.DroidDataConfig):
        data = dataclasses.replace(data, tokenizer_path=datasets["tokenizer"])
    elif isinstance(data, shapes_policy.EmbeddedDataConfig):
        data = _tiny_shapes(data)
    elif isinstance(data, mixture.MixtureDataConfig):
        data = dataclasses.replace(
            data, members=tuple(dataclasses.replace(m, data=_tiny_shapes(m.data)) for m in data.members)
        )
    if isinstance(config.model, Pi0FastConfig) and not isinstance(data, shapes_policy.EmbeddedDataConfig):
        fast_dir = fitted_tokenizer(config.model.action_horizon, config.model.action_dim).save(tmp / "fast")
        overrides = {"model": dataclasses.replace(config.model, fast_tokenizer_path=str(fast_dir)), **overrides}
    fields = {"batch_size": BATCH, "num_workers": 0, "assets_base_dir": str(tmp / "assets"), **overrides}
    config = dataclasses.replace(config, data=data, **fields)
    config.data.prepare()  # the testbed's dataset and tokenizer
    created = config.data.create(config.assets_dirs, config.model)
    if created.norm_stats is None:
        dim = (
            aloha_policy.ACTION_DIM
            if isinstance(data, aloha_policy.LeRobotAlohaDataConfig)
            else libero_policy.STATE_DIM
        )
        identity = normalize.NormStats(mean=np.zeros(dim), std=np.ones(dim), q01=-np.ones(dim), q99=np.ones(dim))
        normalize.save(created.norm_stats_dir, {"state": identity, "actions": identity})
    return config


def _tiny_shapes(data: shapes_policy.EmbeddedDataConfig) -> shapes_policy.EmbeddedDataConfig:
    return dataclasses.replace(data, num_episodes=3, episode_length=6, image_size=32)


@pytest.mark.parametrize("name", _config.list_configs())
def test_every_config_yields_model_shaped_batches(name, datasets, embedded_data_home):
    config = _local(name, datasets)
    if isinstance(
        config.data, droid_policy.DroidDataConfig
    ):  # serves DROID clients; no LeRobot training data by default
        with pytest.raises(ValueError, match="repo-id"):
            data_loader.create_data_loader(config, num_batches=1)
        return
    loader = data_loader.create_data_loader(config, num_batches=1)
    (observation, actions), *rest = list(loader)
    model = config.model
    assert not rest and loader.data_config.repo_id is not None
    assert list(observation.images) == list(IMAGE_KEYS)
    for key in IMAGE_KEYS:
        size = config.model.vision_config.image_size  # resized once, to the vision tower
        assert observation.images[key].shape == (BATCH, 3, size, size)
        assert observation.images[key].min() >= -1.0 and observation.images[key].max() <= 1.0
        assert observation.image_masks[key].shape == (BATCH,)
    if isinstance(model, Pi0FastConfig):  # the robot's state goes into the prompt as is; the postfix has the loss
        assert observation.state.shape == (BATCH, libero_policy.STATE_DIM)
        assert observation.token_loss_mask.any(dim=1).all() and observation.token_ar_mask.shape == (
            BATCH,
            model.max_token_len,
        )
    else:
        assert observation.state.shape == (BATCH, model.action_dim)
    assert observation.tokenized_prompt.shape == (BATCH, model.max_token_len)
    assert observation.tokenized_prompt_mask[:, 0].all()
    assert actions.shape == (BATCH, model.action_horizon, model.action_dim) and actions.dtype == torch.float32
    data_types = libero_policy.LeRobotLiberoDataConfig | shapes_policy.EmbeddedDataConfig | mixture.MixtureDataConfig
    if isinstance(config.data, data_types):
        # The absent right wrist camera is masked, except for π0-FAST, which attends to it as upstream's does.
        right_wrist = observation.image_masks["right_wrist_0_rgb"]
        assert right_wrist.all() if isinstance(model, Pi0FastConfig) else not right_wrist.any()
        assert not actions[..., 7:].any() and not observation.state[:, 8:].any()


def test_an_unprepared_shapes_dataset_is_a_clear_error_until_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv(shapes_dataset.DATA_HOME_ENV, str(tmp_path))
    base = _config.get_config("debug_pi05")
    data = dataclasses.replace(base.data, num_episodes=2, episode_length=3, image_size=16)
    config = dataclasses.replace(base, data=data, batch_size=2, num_workers=0)
    command = re.escape(shapes_dataset.generate_command(data.spec))
    with pytest.raises(FileNotFoundError, match=f"tokenizer is not prepared .*: run `{command}`"):
        data_loader.create_data_loader(config, num_batches=1)
    shapes_dataset.prepare_tokenizer()
    with pytest.raises(FileNotFoundError, match=f"No dataset at .*: generate it with `{command}`"):
        data_loader.create_data_loader(config, num_batches=1)
    data.prepare()
    (_, actions), *_ = data_loader.create_data_loader(config, num_batches=1)
    assert actions.shape == (2, base.model.action_horizon, base.model.action_dim)


def test_libero_batch_values_follow_the_pipeline(datasets):
    config = _local("pi0_libero_pytorch", datasets, seed=3)
    written = datasets["libero"]
    stats = normalize.NormStats(mean=np.full(8, 0.5), std=np.full(8, 2.0))
    data_dir = config.data.create(config.assets_dirs, config.model).norm_stats_dir
    normalize.save(data_dir, {"state": stats, "actions": stats})
    observation, actions = next(iter(data_loader.create_data_loader(config, num_batches=1)))
    indices = data_loader.batch_indices(18, BATCH, 0, seed=3, shuffle=True, rank=0, world_size=1)
    expected_state = (written.state[indices] - 0.5) / 2.0
    np.testing.assert_allclose(observation.state[:, :8].numpy(), expected_state, atol=1e-5)
    delta = written.actions[indices].copy()  # pi0_libero learns the first six dims relative to the state
    delta[:, :6] -= written.state[indices][:, :6]
    np.testing.assert_allclose(actions[:, 0, :7].numpy(), (delta - 0.5) / 2.0, atol=1e-5)


def _collect(config, **kwargs) -> list[torch.Tensor]:
    return [actions for _, actions in data_loader.create_data_loader(config, **kwargs)]


def test_batches_depend_only_on_step_not_on_start_step(datasets):
    config = _local("pi05_libero_pytorch", datasets)
    full = _collect(config, num_batches=7)  # 18 samples -> 4 batches per epoch: crosses an epoch boundary
    resumed = _collect(config, start_step=3, num_batches=4)
    for step in range(3, 7):
        torch.testing.assert_close(resumed[step - 3], full[step])
    assert not torch.equal(full[0], full[4])  # the next epoch is a new permutation
    other_seed = _collect(dataclasses.replace(config, seed=config.seed + 1), num_batches=1)
    assert not torch.equal(other_seed[0], full[0])


@pytest.mark.parametrize("context", [None, "spawn"], ids=["default", "spawn"])
def test_workers_give_the_same_batches(datasets, context):
    config = _local("pi05_libero_pytorch", datasets)
    single = _collect(config, num_batches=3)
    if context is None and "jax" in sys.modules:
        pytest.skip("JAX runs threads in this test process: forking it could deadlock (the JAX trainer spawns)")
    workers = _collect(dataclasses.replace(config, num_workers=2), num_batches=3, multiprocessing_context=context)
    for a, b in zip(single, workers, strict=True):
        torch.testing.assert_close(a, b)


def test_ranks_split_the_global_batch():
    kwargs = {"seed": 0, "shuffle": True}
    global_batch = data_loader.batch_indices(20, 8, 5, rank=0, world_size=1, **kwargs)
    parts = [data_loader.batch_indices(20, 8, 5, rank=r, world_size=2, **kwargs) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), global_batch)
    assert len(set(global_batch.tolist())) == 8


def test_rank_batch_size_and_divisibility(datasets):
    config = _local("pi05_libero_pytorch", datasets)
    observation, _ = next(iter(data_loader.create_data_loader(config, rank=1, world_size=2, num_batches=1)))
    assert observation.batch_size == BATCH // 2
    with pytest.raises(ValueError, match="not divisible"):
        data_loader.create_data_loader(config, world_size=3)


def test_missing_norm_stats_names_the_command(datasets, tmp_path):
    config = _local("pi05_libero_pytorch", datasets)
    config = dataclasses.replace(config, assets_base_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"compute_norm_stats\.py --config-name pi05_libero_pytorch"):
        data_loader.create_data_loader(config)
    assert len(_collect(config, num_batches=1, skip_norm_stats=True)) == 1


def test_validation_batches_are_the_same_held_out_frames_at_every_call(datasets):
    config = _local("pi05_libero_pytorch", datasets, val_num_batches=3)  # 3 episodes of 6 frames
    created = config.data.create(config.assets_dirs, config.model)
    [source] = data_loader.open_sources(config, created)
    split = validation_split.draw({source.name: source.episode_ids()}, seed=0, val_fraction=None, val_episodes=1)
    loader = data_loader.create_validation_loader(config, split, created)
    assert len(loader) == 1, "6 held-out frames fill one batch of 4"
    first, again = list(loader), list(loader)
    torch.testing.assert_close(first[0][1], again[0][1])
    held_out = split.frames(source.name, source.episode_ids(), held_out=True)
    written = datasets["libero"].state[held_out]
    state = first[0][0].state[:, :8].numpy()  # normalised by the identity stats
    assert all(np.isclose(written, row, atol=1e-5).all(axis=1).any() for row in state), "only held-out frames"
    shares = [data_loader.fixed_batch_indices(np.arange(8), 4, 1, rank=r, world_size=2) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(shares), [4, 5, 6, 7])
