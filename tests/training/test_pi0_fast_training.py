"""π0-FAST trains with both trainers on the embedded dataset (debug_pi0_fast), with EMA and LoRA freezing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch
from openpi.training import config as _config
from openpi.training import freezing, jax_trainer, optimizer, trainer
from tests.helpers.training import SMALL_VISION

STEPS = 8


def _config_for(tmp_path: Path, **overrides) -> _config.TrainConfig:
    config = _config.get_config("debug_pi0_fast")
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, vision_variant=SMALL_VISION),
        exp_name="test",
        checkpoint_base_dir=str(tmp_path / "checkpoints"),
        wandb_enabled=False,
        num_train_steps=STEPS,
        log_interval=1,
        save_interval=STEPS,
        batch_size=4,
        lr_schedule=optimizer.CosineDecaySchedule(warmup_steps=2, peak_lr=3e-3, decay_steps=100, decay_lr=1e-4),
        ema_decay=0.9,
        **overrides,
    )


@pytest.mark.parametrize("train", [trainer.train, jax_trainer.train], ids=["pytorch", "jax"])
def test_debug_pi0_fast_loss_falls_and_a_checkpoint_is_written(tmp_path: Path, embedded_data_home, train):
    config = _config_for(tmp_path)
    result = train(config)
    losses = [entry["loss"] for entry in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert (config.checkpoint_dir / str(STEPS)).is_dir()


def test_lora_preset_freezes_the_language_models_base_weights():
    model_config = dataclasses.replace(
        _config.get_config("debug_pi0_fast").model,
        paligemma_variant="width=64,depth=2,mlp_dim=128,num_heads=8,num_kv_heads=1,head_dim=16,lora_rank=4,lora_alpha=4",
    )
    model = Pi0FastPytorch(model_config)
    frozen = freezing.freeze_parameters(model, model_config.get_freeze_filter())
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert frozen and all("language_model" in name and "lora" not in name for name in frozen)
    assert any("lora_a" in name for name in trained) and any("vision_tower" in name for name in trained)


def test_upstream_fast_configs_are_registered():
    libero = _config.get_config("pi0_fast_libero")
    assert (libero.model.action_dim, libero.model.action_horizon, libero.model.max_token_len) == (7, 10, 180)
    low_mem = _config.get_config("pi0_fast_libero_low_mem_finetune")
    assert low_mem.freeze_filter == "lora" and low_mem.ema_decay is None
    assert _config.get_config("pi0_fast_droid").model.action_dim == 8
