"""Training on a mixture: samples drawn by weight from the seed and step, per-dataset losses, bit-exact resume,
mismatched dimensions refused, and the norm stats of a mixture (per dataset or shared, with a validation split)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from openpi.policies.data_config import DataConfig, FakeDataConfig
from openpi.policies.mixture import MixtureMember
from openpi.shared import normalize
from openpi.training import checkpoints, data_loader, norm_stats, run_data, trainer
from openpi.training import config as _config
from tests.helpers.training import (
    Crash,
    crash_after,
    pruned_embedded_config,
    state_dict_copy,
    tiny_mixture,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_samples_are_drawn_by_weight_from_the_seed_and_step():
    sizes, weights = [30, 50, 20], [1.0, 3.0, 0.0]
    offsets = np.array([0, 30, 80, 100])

    def draw(step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        return data_loader.mixture_batch_indices(sizes, weights, 8, step, seed=1, rank=rank, world_size=world_size)

    batch = draw(5)
    assert np.array_equal(batch, draw(5)) and not np.array_equal(batch, draw(6))
    assert np.array_equal(np.concatenate([draw(5, rank, 2) for rank in range(2)]), batch), "ranks split the batch"
    drawn = np.concatenate([draw(step) for step in range(500)])
    members = np.searchsorted(offsets, drawn, side="right") - 1
    assert np.bincount(members, minlength=3)[2] == 0, "a dataset of weight 0 is never drawn"
    assert np.mean(members == 1) == pytest.approx(0.75, abs=0.03)
    assert len(np.unique(drawn[members == 0])) == 30, "every frame of a dataset is drawn"


def test_a_dataset_whose_state_dimension_disagrees_is_refused(tmp_path, embedded_data_home):
    mixture = tiny_mixture()
    mixture = dataclasses.replace(mixture, members=(mixture.members[0], MixtureMember("fake", FakeDataConfig())))
    config = pruned_embedded_config(tmp_path, mixture)
    with pytest.raises(ValueError, match=r"Mixture dataset 'fake': its 'state' has 32 dims but 'easy''s has 8"):
        trainer.train(config)
    assert not checkpoints.complete_steps(config.checkpoint_dir)


def test_a_dataset_whose_action_dimension_disagrees_is_refused():
    def source(name: str, action_dim: int) -> data_loader.Source:
        sample = {"state": np.zeros(8, np.float32), "actions": np.zeros((10, action_dim), np.float32)}
        return data_loader.Source(name, 1.0, DataConfig(), [sample])

    data_loader.check_dimensions([source("a", 7), source("b", 7)])
    with pytest.raises(ValueError, match=r"Mixture dataset 'six': its 'actions' has 6 dims but 'seven''s has 7"):
        data_loader.check_dimensions([source("seven", 7), source("six", 6)])


def _registered_mixture_small(tmp_path: Path, **overrides) -> _config.TrainConfig:
    """``debug_pi05_lightvla_mixture`` with its two scenes recorded tiny and the small model."""
    registered = _config.get_config("debug_pi05_lightvla_mixture").data
    members = tuple(
        dataclasses.replace(m, data=dataclasses.replace(m.data, num_episodes=6, episode_length=4, image_size=32))
        for m in registered.members
    )
    return pruned_embedded_config(tmp_path, dataclasses.replace(registered, members=members), **overrides)


def test_the_registered_mixture_trains_with_per_dataset_losses_and_resumes_bit_exactly(
    tmp_path: Path, embedded_data_home: Path, monkeypatch: pytest.MonkeyPatch
):
    config = _registered_mixture_small(tmp_path, num_train_steps=4, save_interval=2, log_interval=3)
    reference = trainer.train(dataclasses.replace(config, exp_name="uninterrupted"))
    logged = [h for h in reference.history if "loss" in h]
    assert [h["step"] for h in logged] == [0.0, 3.0]
    per_dataset = [{k: v for k, v in h.items() if k.startswith("train/loss/")} for h in logged]
    assert all(per_dataset) and set().union(*per_dataset) == {"train/loss/easy", "train/loss/hard"}
    window = per_dataset[-1]  # steps 1-3: 12 samples, both datasets drawn
    assert window.keys() == {"train/loss/easy", "train/loss/hard"} and len(set(window.values())) == 2

    interrupted = dataclasses.replace(config, exp_name="interrupted")
    with monkeypatch.context() as patch:
        crash_after(3, patch)  # checkpoint 2 holds a logging window (steps 1-2) with samples of both datasets
        with pytest.raises(Crash):
            trainer.train(interrupted)
    resumed = trainer.train(dataclasses.replace(interrupted, resume=True))
    assert _without_speed(resumed.history) == _without_speed([h for h in reference.history if h["step"] >= 2])
    a, b = state_dict_copy(resumed.model), state_dict_copy(reference.model)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assets = {p.name for p in (interrupted.checkpoint_dir / "4" / "assets").iterdir()}
    assert assets == {m.data.spec.folder_name for m in config.data.members}, "every dataset's norm stats"


def _without_speed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "samples_per_s"} for h in history]


def test_norm_stats_of_a_mixture_per_dataset_or_shared_and_of_a_split(tmp_path: Path, embedded_data_home: Path):
    config = pruned_embedded_config(tmp_path, tiny_mixture())
    per_dataset = norm_stats.compute_norm_stats_sets(config)
    created = config.data.create(config.assets_dirs, config.model)
    assert [d for _, d in per_dataset] == [Path(m.config.norm_stats_dir) for m in created.members]

    shared = dataclasses.replace(config, data=dataclasses.replace(config.data, shared_norm_stats=True))
    [(stats, directory)] = norm_stats.compute_norm_stats_sets(shared)
    assert directory == shared.assets_dirs / "easy+hard"
    # The union's mean lies between the two datasets' own means.
    low, high = (
        np.minimum(*(s["state"].mean for s, _ in per_dataset)),
        np.maximum(*(s["state"].mean for s, _ in per_dataset)),
    )
    assert np.all((low - 1e-6 <= stats["state"].mean) & (stats["state"].mean <= high + 1e-6))
    assert not np.allclose(stats["state"].mean, low) and not np.allclose(stats["state"].mean, high)
    with pytest.raises(FileNotFoundError, match=r"compute_norm_stats\.py --config-name debug"):
        trainer.train(shared)
    normalize.save(directory, stats)
    result = trainer.train(dataclasses.replace(shared, num_train_steps=1, save_interval=1, val_episodes=1))
    assert {"val/loss/easy", "val/loss/hard"} <= result.history[-1].keys()
    written = [p.parent.name for p in shared.assets_dirs.glob("easy+hard/train_episodes_*/norm_stats.json")]
    assert len(written) == 1, "the split's training episodes get their own shared set"


def test_the_script_writes_a_mixtures_training_episode_stats_where_a_run_reads_them(
    tmp_path: Path, embedded_data_home: Path, caplog: pytest.LogCaptureFixture
):
    config = pruned_embedded_config(tmp_path, tiny_mixture(), val_episodes=1)
    written = norm_stats.save_norm_stats_sets(config, val_episodes=1)
    with caplog.at_level(logging.INFO):
        data = run_data.prepare(config, None)
    assert "Computing the norm stats" not in caplog.text, "the run reads what the script wrote"
    members = data.data_config.members
    assert written == [Path(m.config.norm_stats_dir) / "norm_stats.json" for m in members]
    assert all(path.parent.name.startswith("train_episodes_") for path in written)
    for member, path in zip(members, written, strict=True):
        saved = normalize.load(path.parent)
        np.testing.assert_array_equal(member.config.norm_stats["state"].q99, saved["state"].q99)
