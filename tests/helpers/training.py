"""Training helpers shared by the tests: small train configs (a small mixture too), a crashing data loader for resume
tests, a free port."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import torch

from openpi.policies.mixture import MixtureDataConfig, MixtureMember
from openpi.policies.shapes_policy import EmbeddedDataConfig
from openpi.training import config as _config
from openpi.training import data_loader

# SigLIP at 56x56 (16 patches per camera) keeps CPU steps fast; the trainer resizes images to the model's resolution.
SMALL_VISION = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,image_size=56"


def small_config(base: str, tmp_path: Path, **overrides) -> _config.TrainConfig:
    config = _config.get_config(base)
    model = dataclasses.replace(config.model, vision_variant=SMALL_VISION, max_token_len=64)
    fields = {
        "model": model,
        "exp_name": "test",
        "checkpoint_base_dir": str(tmp_path / "checkpoints"),
        "wandb_enabled": False,
        "num_workers": 0,
        **overrides,
    }
    return dataclasses.replace(config, **fields)


def pruned_fake_data_config(tmp_path: Path, **overrides) -> _config.TrainConfig:
    """Tiny π0.5 with pruning on random data (no dataset decoding), for tests that only need the mechanics."""
    model = dataclasses.replace(_config.get_config("debug_pi05_lightvla").model, vision_variant=SMALL_VISION)
    fields = {"model": model, "batch_size": 2, "log_interval": 1, **overrides}
    return small_config("debug", tmp_path, **fields)


def state_dict_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def embedded_pruning_config(tmp_path: Path, steps: int) -> _config.TrainConfig:
    """The quickstart config, smaller (batch 4, 56 px images), for ``steps`` steps logged every 10."""
    base = _config.get_config("debug_pi05_lightvla")
    return small_config(
        "debug_pi05_lightvla",
        tmp_path,
        batch_size=4,
        num_train_steps=steps,
        log_interval=10,
        save_interval=steps,
        lr_schedule=dataclasses.replace(base.lr_schedule, warmup_steps=10, decay_steps=steps),
    )


# Tiny shapes datasets (6 episodes of 4 frames at 32 px), an easy scene and a hard one.
TINY_EASY = EmbeddedDataConfig(num_episodes=6, episode_length=4, image_size=32, min_objects=1, max_objects=2)
TINY_HARD = EmbeddedDataConfig(
    num_episodes=6, episode_length=4, image_size=32, min_objects=4, max_objects=6, shared_attributes=True
)


def tiny_mixture(weights: tuple[float, float] = (1.0, 2.0), **overrides) -> MixtureDataConfig:
    members = (MixtureMember("easy", TINY_EASY, weights[0]), MixtureMember("hard", TINY_HARD, weights[1]))
    return MixtureDataConfig(members=members, **overrides)


def pruned_embedded_config(tmp_path: Path, data, **overrides) -> _config.TrainConfig:
    """The small pruned model on ``data`` (e.g. :func:`tiny_mixture`), batch 4, logged every step, its assets (split
    norm stats) under ``tmp_path``."""
    model = dataclasses.replace(_config.get_config("debug_pi05_lightvla").model, vision_variant=SMALL_VISION)
    fields = {"model": model, "data": data, "batch_size": 4, "log_interval": 1, "assets_base_dir": str(tmp_path / "a")}
    return small_config("debug", tmp_path, **{**fields, **overrides})


class Crash(Exception):
    pass


def crash_after(num_batches: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes the training data raise after ``num_batches`` batches, like a process killed mid-run."""
    create = data_loader.create_data_loader

    class CrashingLoader:
        def __init__(self, loader):
            self._loader = loader

        def __getattr__(self, name):
            return getattr(self._loader, name)

        def __iter__(self):
            for index, batch in enumerate(self._loader):
                if index == num_batches:
                    raise Crash
                yield batch

    monkeypatch.setattr(data_loader, "create_data_loader", lambda *a, **k: CrashingLoader(create(*a, **k)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
