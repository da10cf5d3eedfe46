"""Validation on held-out episodes in the PyTorch trainer: val/* at every interval, no effect on training, the served
forward, ranks' shares, resume, and training (and its norm stats) on the training episodes only."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.shared import normalize
from openpi.training import checkpoints, data_loader, norm_stats, run_data, trainer, validation, validation_split
from tests.helpers.models import randomized
from tests.helpers.training import (
    TINY_EASY,
    Crash,
    crash_after,
    free_port,
    pruned_embedded_config,
    pruned_fake_data_config,
    state_dict_copy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Fake data: every sample is an episode of its own; 1% of 1024 holds out 10 of them.
VAL = {"val_fraction": 0.01, "val_num_batches": 2}


def _validations(history: list[dict[str, float]]) -> dict[float, dict[str, float]]:
    return {h["step"]: h for h in history if "val/loss" in h}


def _training(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "samples_per_s"} for h in history if "loss" in h]


def test_validation_is_logged_every_interval_and_leaves_training_untouched(tmp_path: Path):
    config = pruned_fake_data_config(tmp_path, num_train_steps=4, save_interval=4, **VAL)
    every_step = trainer.train(dataclasses.replace(config, exp_name="every", val_interval=1))
    at_end = trainer.train(dataclasses.replace(config, exp_name="end", val_interval=100))

    assert list(_validations(every_step.history)) == [1.0, 2.0, 3.0, 4.0]
    assert list(_validations(at_end.history)) == [4.0]
    # Validating after every step changes no weight, loss or RNG stream of training.
    assert _training(every_step.history) == _training(at_end.history)
    a, b = state_dict_copy(every_step.model), state_dict_copy(at_end.model)
    assert all(torch.equal(a[key], b[key]) for key in a)
    final = _validations(every_step.history)[4.0]
    assert final == _validations(at_end.history)[4.0]
    horizon = [final[f"val/loss_horizon/{k}"] for k in range(config.model.action_horizon)]
    assert final["val/loss"] == pytest.approx(np.mean(horizon), rel=1e-6)
    assert final["val/served_gap"] == pytest.approx(final["val/loss_served"] - final["val/loss"], abs=1e-9)


def test_the_served_loss_is_the_eval_forward_at_the_budget_without_training_noise():
    config = pruned_fake_data_config(Path("unused")).model
    model = randomized(PI0Pytorch(dataclasses.replace(config, dtype="float32")))
    loader = data_loader.create_data_loader(pruned_fake_data_config(Path("unused")), num_batches=1)
    observation, actions = next(iter(loader))
    drawn = validation.draws(0, np.arange(len(actions)), tuple(actions.shape[1:]), 3 * config.vision_config.num_patches)
    noise, time, uniform = (torch.from_numpy(x) for x in (drawn.noise, drawn.time, drawn.prune_uniform))
    with torch.no_grad():
        model.eval()
        model.pruner.noise_scale = 5.0
        served = model(observation, actions, noise, time, uniform)
        model.pruner.noise_scale, model.pruner.collect_stats = 0.0, True
        again = model(observation, actions, noise, time, torch.rand_like(uniform))
        assert torch.equal(served, again), "the eval forward ignores the training noise and its draw"
        present = sum(bool(mask[0]) for mask in observation.image_masks.values())
        budget = model.pruner.budget(torch.ones(1, present * config.vision_config.num_patches, dtype=torch.bool))
        kept = model.pruner.last_selection.mask.sum(dim=1)
        assert torch.equal(kept, budget.expand_as(kept)), "the serving budget of the present cameras' patches"
        served_prefix = model.pruner.last_stats["train_prefix_tokens_mean"]
        model.train()
        model.pruner.noise_scale = 5.0
        assert not torch.equal(model(observation, actions, noise, time, uniform), served)
    # Training (gated budget) runs every patch; the served prefix holds the budget's alone: the others are dropped.
    dropped = len(observation.images) * config.vision_config.num_patches - int(budget)
    assert served_prefix == model.pruner.last_stats["train_prefix_tokens_mean"] - dropped


def _ddp_worker(rank: int, port: int, config, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["WORLD_SIZE"] = "2"
    torch.set_num_threads(1)
    result = trainer.train(config)
    torch.save(_validations(result.history), Path(out_dir) / f"rank{rank}.pt")


def test_every_ddp_rank_validates_its_share_and_the_mean_is_the_single_process_one(tmp_path: Path):
    config = pruned_fake_data_config(tmp_path, batch_size=4, num_train_steps=1, save_interval=1, **VAL)
    config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, weight_decay=0.0))
    single = _validations(trainer.train(dataclasses.replace(config, exp_name="single")).history)[1.0]
    mp.spawn(_ddp_worker, args=(free_port(), dataclasses.replace(config, exp_name="ddp"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False)[1.0] for r in range(2)]
    assert ranks[0] == ranks[1], "every rank holds the reduced metrics"
    assert ranks[0].keys() == single.keys()
    for key, value in single.items():
        assert ranks[0][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_a_resumed_run_validates_on_the_same_episodes_and_says_when_asked_for_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    config = pruned_fake_data_config(tmp_path, num_train_steps=4, save_interval=2, val_interval=2, **VAL)
    reference = trainer.train(dataclasses.replace(config, exp_name="uninterrupted"))
    interrupted = dataclasses.replace(config, exp_name="interrupted")
    with monkeypatch.context() as patch:
        crash_after(3, patch)
        with pytest.raises(Crash):
            trainer.train(interrupted)
    split = validation_split.load(interrupted.checkpoint_dir / "2")
    assert split is not None and split.val_fraction == 0.01

    with caplog.at_level(logging.WARNING):
        resumed = trainer.train(dataclasses.replace(interrupted, resume=True, val_fraction=0.02))
    assert "this run asks for --val-fraction 0.02: keeping the checkpoint's split" in caplog.text
    assert validation_split.load(interrupted.checkpoint_dir / "4") == split
    assert _validations(resumed.history) == {4.0: _validations(reference.history)[4.0]}
    a, b = state_dict_copy(resumed.model), state_dict_copy(reference.model)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_training_and_its_norm_stats_read_only_the_training_episodes(
    tmp_path: Path, embedded_data_home: Path, monkeypatch: pytest.MonkeyPatch
):
    config = pruned_embedded_config(tmp_path, TINY_EASY, val_episodes=2, num_train_steps=2, save_interval=2)
    config.data.prepare()
    read: list[int] = []
    original = data_loader.LeRobotSamples.__getitem__
    monkeypatch.setattr(data_loader.LeRobotSamples, "__getitem__", lambda self, i: read.append(i) or original(self, i))
    data = run_data.prepare(config, None)
    loader = data_loader.create_data_loader(config, split=data.split, data_config=data.data_config, num_batches=4)
    list(loader)  # 4 batches of 4: every one of the 16 training frames

    source = data_loader.open_sources(config, data.data_config)[0]
    held_out = set(data.split.frames(source.name, source.episode_ids(), held_out=True).tolist())
    assert len(data.split.held_out[source.name]) == 2 and len(held_out) == 8
    assert read and not held_out & set(read), "no held-out frame is read, for the norm stats or for training"
    full = normalize.load(config.data.create(config.assets_dirs, config.model).norm_stats_dir)
    [(expected, directory)] = norm_stats.compute_norm_stats_sets(config, split=data.split)
    assert directory == Path(data.data_config.norm_stats_dir) and directory.parent.parent == config.assets_dirs
    assert not np.allclose(expected["actions"].mean, full["actions"].mean)
    np.testing.assert_array_equal(data.data_config.norm_stats["actions"].mean, expected["actions"].mean)

    trainer.train(config)
    saved = normalize.load(config.checkpoint_dir / "2" / "assets" / data.data_config.asset_id)
    np.testing.assert_array_equal(saved["state"].q99, expected["state"].q99)


def test_a_fraction_that_holds_out_no_episode_is_refused_before_training(tmp_path: Path):
    config = pruned_fake_data_config(tmp_path, val_fraction=0.0001)
    with pytest.raises(ValueError, match=r"--val-fraction 0.0001 holds out no episode of dataset 'fake'"):
        trainer.train(config)
    assert not checkpoints.complete_steps(config.checkpoint_dir)
