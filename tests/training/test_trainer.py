"""The training loop: loss falls, exact resume, DDP keeps ranks in sync, pruning schedule/telemetry, experiment dirs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from openpi.models.observation import random_observation
from openpi.models.pi0_config import tiny_config
from openpi.models_pytorch import preprocessing, rtc
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.token_pruner import ImageTokenPruner
from openpi.training import checkpoints, trainer
from openpi.training import config as _config
from tests.helpers.models import randomized
from tests.helpers.training import (
    Crash,
    crash_after,
    embedded_pruning_config,
    free_port,
    pruned_fake_data_config,
    small_config,
    state_dict_copy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _assert_state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")


# ------------------------------------------------------------------------------------------------- loss


def test_loss_falls_on_embedded_dataset_with_pruning(tmp_path: Path):
    steps = 50
    config = embedded_pruning_config(tmp_path, steps)
    result = trainer.train(config)

    losses = [entry["loss"] for entry in result.history]
    # history[0] is step 0 alone; history[1] averages steps 1-10, history[-1] the last window.
    assert losses[-1] < 0.75 * losses[1], losses
    first, last = result.history[0], result.history[-1]
    assert first["prune/noise_scale"] == pytest.approx(1.0)
    assert last["prune/noise_scale"] == pytest.approx(1.0 - (steps - 1) / steps)
    assert isinstance(last["prune/kept_tokens_overall_mean"], float)
    assert 1.0 <= last["prune/kept_tokens_overall_mean"] <= 2 * 16  # two cameras of 16 patches
    assert checkpoints.complete_steps(config.checkpoint_dir) == [steps]
    asset_dir = config.checkpoint_dir / str(steps) / "assets"
    assert [p.name for p in asset_dir.iterdir()] and all((p / "norm_stats.json").is_file() for p in asset_dir.iterdir())


# ----------------------------------------------------------------------------------------------- resume


def test_interrupted_run_resumes_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = pruned_fake_data_config(tmp_path, num_train_steps=4, save_interval=2, keep_period=2)
    reference = trainer.train(dataclasses.replace(config, exp_name="uninterrupted"))

    interrupted = dataclasses.replace(config, exp_name="interrupted")
    with monkeypatch.context() as patch:
        crash_after(3, patch)  # checkpoint 2 is written, step 3 (0-based 2) runs, then the data "dies"
        with pytest.raises(Crash):
            trainer.train(interrupted)
    assert checkpoints.complete_steps(interrupted.checkpoint_dir) == [2]

    resumed = trainer.train(dataclasses.replace(interrupted, resume=True))
    assert resumed.history[0]["step"] == 2.0  # continued, did not start over
    _assert_state_dicts_equal(state_dict_copy(resumed.model), state_dict_copy(reference.model))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history[2:]]
    assert checkpoints.complete_steps(interrupted.checkpoint_dir) == [2, 4]

    optimizer_file = Path("4") / checkpoints.OPTIMIZER_FILENAME
    final_state = torch.load(interrupted.checkpoint_dir / optimizer_file, weights_only=True)
    reference_state = torch.load(config.checkpoint_dir.parent / "uninterrupted" / optimizer_file, weights_only=True)
    for a, b in zip(final_state["state"].values(), reference_state["state"].values(), strict=True):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)


def test_logged_losses_after_a_resume_match_the_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Logs at steps 0, 3 and 5; checkpoints after 2 and 4 steps: the resume starts inside a logging window.
    config = pruned_fake_data_config(tmp_path, num_train_steps=6, save_interval=2, log_interval=3, keep_period=None)
    reference = trainer.train(dataclasses.replace(config, exp_name="uninterrupted"))
    interrupted = dataclasses.replace(config, exp_name="interrupted")
    with monkeypatch.context() as patch:
        crash_after(3, patch)
        with pytest.raises(Crash):
            trainer.train(interrupted)
    resumed = trainer.train(dataclasses.replace(interrupted, resume=True))
    logged = {h["step"]: h["loss"] for h in resumed.history}
    assert logged == {h["step"]: h["loss"] for h in reference.history if h["step"] >= 2}


def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    config = pruned_fake_data_config(tmp_path, num_train_steps=4, save_interval=2, keep_period=None)
    trainer.train(config)
    damaged = config.checkpoint_dir / "4" / checkpoints.OPTIMIZER_FILENAME
    damaged.write_bytes(damaged.read_bytes()[:-16] + bytes(16))
    resumed = trainer.train(dataclasses.replace(config, num_train_steps=6, resume=True))
    assert resumed.history[0]["step"] == 2.0, "resumed from checkpoint 2, not the damaged 4"
    assert f"{damaged} does not match its checksum" in caplog.text


# -------------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world_size: int, port: int, config: _config.TrainConfig, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    result = trainer.train(config)
    torch.save(state_dict_copy(result.model), Path(out_dir) / f"rank{rank}.pt")


def test_two_process_ddp_keeps_ranks_identical(tmp_path: Path):
    config = pruned_fake_data_config(tmp_path, batch_size=4, num_train_steps=2, save_interval=2)
    mp.spawn(_ddp_worker, args=(2, free_port(), config, str(tmp_path)), nprocs=2, join=True)

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    _assert_state_dicts_equal(rank0, rank1)
    torch.manual_seed(config.seed)
    initial = PI0Pytorch(dataclasses.replace(config.model, dtype="float32")).state_dict()
    assert not torch.equal(initial["action_out_proj.weight"], rank0["action_out_proj.weight"]), "no update happened"
    assert checkpoints.complete_steps(config.checkpoint_dir) == [2]


# ------------------------------------------------------------------------------------------------ pruning
def test_pruner_noise_decays_and_stats_are_collected_only_on_log_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen: list[tuple[float, bool]] = []  # (noise_scale, collect_stats) at each training forward of the pruner
    original = ImageTokenPruner.forward

    def spy(self, *args):
        seen.append((self.noise_scale, self.collect_stats))
        return original(self, *args)

    monkeypatch.setattr(ImageTokenPruner, "forward", spy)
    config = pruned_fake_data_config(tmp_path, num_train_steps=4, log_interval=2, save_interval=4)
    trainer.train(config)

    assert [noise for noise, _ in seen] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert [collect for _, collect in seen] == [True, False, True, True]  # log steps 0, 2 and the last step


def test_noise_scale_follows_configured_initial_value():
    config = dataclasses.replace(
        _config.get_config("debug_pi05_lightvla"),
        num_train_steps=100,
        model=dataclasses.replace(_config.get_config("debug_pi05_lightvla").model, token_prune_noise_scale=0.5),
    )
    assert [trainer.pruner_noise_scale(config, s) for s in (0, 50, 100, 150)] == [0.5, 0.25, 0.0, 0.0]


# --------------------------------------------------------------------------------------- experiment dirs
def test_existing_experiment_dir_needs_resume_or_overwrite(tmp_path: Path):
    config = small_config("debug", tmp_path)
    config.checkpoint_dir.mkdir(parents=True)
    (config.checkpoint_dir / "notes.txt").write_text("old run")

    with pytest.raises(trainer.ExperimentDirError, match=r"--resume .* --overwrite"):
        trainer.prepare_experiment_dir(config)
    with pytest.raises(trainer.ExperimentDirError, match="mutually exclusive"):
        trainer.prepare_experiment_dir(dataclasses.replace(config, resume=True, overwrite=True))

    assert trainer.prepare_experiment_dir(dataclasses.replace(config, resume=True)) is None
    assert (config.checkpoint_dir / "notes.txt").exists()
    trainer.prepare_experiment_dir(dataclasses.replace(config, overwrite=True))
    assert config.checkpoint_dir.is_dir() and not any(config.checkpoint_dir.iterdir())
    # What a run that failed before writing anything leaves: an empty folder, reused without --resume.
    assert trainer.prepare_experiment_dir(config) is None


def test_resume_picks_latest_complete_checkpoint(tmp_path: Path):
    config = dataclasses.replace(small_config("debug", tmp_path), resume=True)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (3, 6):
        state = checkpoints.TrainingState(step=step, rng_states=[checkpoints.capture_rng_state()])
        checkpoints.save_checkpoint(config.checkpoint_dir, state, model, optimizer)
    (config.checkpoint_dir / "9").mkdir()  # an incomplete, newer one
    assert trainer.prepare_experiment_dir(config) == 6
    assert not (config.checkpoint_dir / "9").exists()


# ------------------------------------------------------------------------------------------------- wandb
def test_wandb_is_offline_without_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    assert trainer.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert trainer.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trainer.wandb_mode() == "disabled"


def test_a_fine_tuning_config_without_base_weights_refuses_to_start(tmp_path: Path):
    base = _config.cli(["pi05_libero_pytorch", "--exp-name", "x", "--checkpoint-base-dir", str(tmp_path)])
    assert not base.allow_random_init and base.gradient_checkpointing
    with pytest.raises(ValueError, match=r"--pytorch-weight-path is not set\. Convert the base checkpoint"):
        trainer.train(dataclasses.replace(base, wandb_enabled=False))
    assert not base.checkpoint_dir.exists(), "a refused run leaves no experiment folder behind"
    allowed = _config.cli(["pi05_libero_pytorch", "--exp-name", "x", "--allow-random-init"])
    assert allowed.allow_random_init
    trainer.check_base_weights(allowed)
    trainer.check_base_weights(dataclasses.replace(base, pytorch_weight_path="checkpoints/base"))


def test_mixed_precision_keeps_float32_weights_and_trains(tmp_path: Path):
    config = pruned_fake_data_config(tmp_path, num_train_steps=3, pytorch_training_precision="mixed")
    result = trainer.train(config)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert trainer.gpu_memory_metrics(torch.device("cpu")) == {}


def test_a_training_step_with_rtc_averages_the_loss_outside_the_committed_prefix():
    config = tiny_config(vision_variant="tiny_112", action_horizon=6, max_token_len=16)
    model = randomized(PI0Pytorch(config), scale=0.05).train()
    reference = PI0Pytorch(config).train()
    reference.load_state_dict(model.state_dict())
    observation = random_observation(config, 4, seed=0, valid_prompt_tokens=8)
    actions = torch.randn(4, 6, config.action_dim, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    resolution = (config.vision_config.image_size,) * 2

    torch.manual_seed(0)
    loss, _, sample_losses = trainer.train_step(
        model, optimizer, observation, actions, lr=0.0, clip_gradient_norm=1.0, image_resolution=resolution,
        generator=torch.Generator().manual_seed(1), rtc_max_delay=5,
    )  # fmt: skip
    torch.manual_seed(0)  # the same draws, in the same order: the delays, then the flow's noise and time
    augmented = preprocessing.preprocess_observation(
        observation, train=True, image_resolution=resolution, generator=torch.Generator().manual_seed(1)
    )
    delay = rtc.sample_training_delay(4, 5, "cpu")
    with torch.no_grad():
        per_element = reference(augmented, actions, rtc_delay=delay)
    committed = rtc.committed_mask(delay, 6)
    assert committed.any() and not committed.all()
    torch.testing.assert_close(loss, per_element[~committed].mean(), rtol=1e-5, atol=1e-6)
    each = torch.stack([per_element[i][~committed[i]].mean() for i in range(4)])  # a mixture's per-dataset losses
    torch.testing.assert_close(sample_losses, each, rtol=1e-5, atol=1e-6)
