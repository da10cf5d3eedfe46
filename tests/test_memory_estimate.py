"""The training memory estimator: exact parameter accounting per mode, activations that scale with the batch and
shrink with checkpointing, FSDP sharding."""

from __future__ import annotations

import dataclasses

import pytest

from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.training import config as _config
from openpi.training import memory
from tests.script_loader import load_script

BASE = dataclasses.replace(_config.get_config("debug_pi05_lightvla"), pytorch_training_precision="float32")


def test_parameter_gradient_and_optimizer_bytes_are_exact():
    estimate = memory.estimate(BASE, batch_size=2)
    model = PI0Pytorch(BASE.model)
    count = sum(p.numel() for p in model.parameters())
    assert estimate.parameters == estimate.trainable_parameters == count
    assert estimate.weight_bytes == estimate.gradient_bytes == 4 * count
    assert estimate.optimizer_bytes == 8 * count and estimate.ema_bytes == 0
    with_ema = memory.estimate(dataclasses.replace(BASE, ema_decay=0.99), batch_size=2)
    assert with_ema.ema_bytes == 4 * sum(t.numel() for t in model.state_dict().values())


def test_frozen_parameters_have_no_gradient_or_optimizer_bytes():
    frozen = memory.estimate(dataclasses.replace(BASE, freeze_filter="vision"), batch_size=2)
    vision = sum(
        p.numel()
        for name, p in PI0Pytorch(BASE.model).named_parameters()
        if "vision_tower" in name or "multi_modal_projector" in name
    )
    assert frozen.trainable_parameters == frozen.parameters - vision
    assert frozen.gradient_bytes == 4 * frozen.trainable_parameters


def test_activations_scale_with_the_batch_and_checkpointing_cuts_them():
    one, four = (memory.estimate(BASE, batch_size=b).activation_bytes for b in (1, 4))
    assert four == pytest.approx(4 * one, rel=0.05)
    checkpointed = memory.estimate(dataclasses.replace(BASE, gradient_checkpointing=True), batch_size=4)
    assert 0 < checkpointed.activation_bytes < four / 2


def test_fsdp_shards_everything_but_activations():
    alone = memory.estimate(BASE, batch_size=2)
    sharded = memory.estimate(BASE, batch_size=2, fsdp_devices=4)
    assert sharded.weight_bytes == alone.weight_bytes // 4 and sharded.optimizer_bytes == alone.optimizer_bytes // 4
    assert sharded.activation_bytes == alone.activation_bytes
    with pytest.raises(ValueError, match="fsdp_devices"):
        memory.estimate(BASE, fsdp_devices=0)


def test_the_script_prints_every_mode(capsys):
    script = load_script("scripts/estimate_memory.py")
    script.main(script.Args(config="debug_pi05_lightvla", batch_size=2, fsdp_devices=(1, 2)))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "mode" not in line]
    assert len(rows) == 12 and any(row.startswith("| lora, checkpointing on | 2 |") for row in rows)
