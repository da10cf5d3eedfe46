"""The moving average of the weights: its update, its place in checkpoints, exact resume, and what loaders read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from openpi.models.tokenizer import train_sentencepiece
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies import policy_config
from openpi.shared.checkpoint_files import RAW_WEIGHTS_FILE, WEIGHTS_FILE
from openpi.training import checkpoints, trainer
from openpi.training.ema import ExponentialMovingAverage
from tests.helpers.policies import PROMPTS, make_train_config, write_checkpoint
from tests.helpers.training import Crash, crash_after, pruned_fake_data_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DECAY = 0.5


def test_update_is_the_upstream_formula_and_buffers_are_copied():
    model = nn.BatchNorm1d(3)
    ema = ExponentialMovingAverage(model, 0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
        model.running_mean.add_(5.0)
    ema.update(model)
    torch.testing.assert_close(ema.state_dict()["weight"], 0.9 * start + 0.1 * (start + 1.0))
    torch.testing.assert_close(ema.state_dict()["running_mean"], model.running_mean)
    with pytest.raises(ValueError, match="ema_decay"):
        ExponentialMovingAverage(model, 1.0)


def _load(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(path)


def test_training_saves_the_average_as_model_and_the_weights_as_raw(tmp_path: Path):
    config = pruned_fake_data_config(tmp_path, num_train_steps=2, save_interval=1, keep_period=1, ema_decay=DECAY)
    trainer.train(config)
    first, second = (config.checkpoint_dir / str(step) for step in (1, 2))
    ema1, ema2 = _load(first / WEIGHTS_FILE), _load(second / WEIGHTS_FILE)
    raw2 = _load(second / RAW_WEIGHTS_FILE)
    assert all(value.dtype == torch.float32 for value in ema2.values())
    key = "action_out_proj.weight"
    assert not torch.equal(ema2[key], raw2[key])
    for name in ema2:  # after step 2: ema = d * ema_1 + (1 - d) * w_2
        torch.testing.assert_close(ema2[name], DECAY * ema1[name] + (1 - DECAY) * raw2[name].float())


def test_a_resumed_run_continues_the_average_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = pruned_fake_data_config(tmp_path, num_train_steps=4, save_interval=2, keep_period=2, ema_decay=DECAY)
    trainer.train(dataclasses.replace(config, exp_name="uninterrupted"))
    interrupted = dataclasses.replace(config, exp_name="interrupted")
    with monkeypatch.context() as patch:
        crash_after(3, patch)
        with pytest.raises(Crash):
            trainer.train(interrupted)
    trainer.train(dataclasses.replace(interrupted, resume=True))
    for filename in (WEIGHTS_FILE, RAW_WEIGHTS_FILE):
        resumed = _load(interrupted.checkpoint_dir / "4" / filename)
        reference = _load(config.checkpoint_dir.parent / "uninterrupted" / "4" / filename)
        for name in reference:
            torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=0)
    assert checkpoints.verify_checkpoint(interrupted.checkpoint_dir / "4") == []


def test_loaders_serve_the_average_and_the_raw_weights_on_request(tmp_path: Path):
    config = make_train_config(train_sentencepiece(PROMPTS, tmp_path / "tok", vocab_size=300))
    checkpoint = write_checkpoint(tmp_path / "ckpt", config)  # model.safetensors: seed 0
    torch.manual_seed(1)
    weights.save_weights(PI0Pytorch(config.model), checkpoint, RAW_WEIGHTS_FILE)
    key = "action_out_proj.weight"
    for raw, filename in ((False, WEIGHTS_FILE), (True, RAW_WEIGHTS_FILE)):
        policy = policy_config.create_trained_policy(config, checkpoint, pytorch_device="cpu", raw_weights=raw)
        torch.testing.assert_close(policy.model.state_dict()[key], _load(checkpoint / filename)[key])
    (checkpoint / RAW_WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="trained with ema_decay"):
        policy_config.create_trained_policy(config, checkpoint, pytorch_device="cpu", raw_weights=True)
