"""Policy helpers shared by the tests: the tiny LIBERO-reading train config, a checkpoint with norm stats, LIBERO
observations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies import libero_policy
from openpi.shared import normalize
from openpi.training import config as _config

CONFIG_NAME = "debug_pi05"
ASSET_ID = "physical-intelligence/libero"
PROMPTS = ["pick up the black bowl", "open the top drawer", "put the cream cheese in the bowl"]
SAMPLE_KWARGS = {"num_steps": 2}


def make_train_config(tokenizer_path: Path, name: str = CONFIG_NAME) -> _config.TrainConfig:
    """The registered tiny config, reading LIBERO-format observations with a tokenizer trained by the test."""
    data = libero_policy.LeRobotLiberoDataConfig(tokenizer_path=str(tokenizer_path))
    return dataclasses.replace(_config.get_config(name), data=data)


def write_checkpoint(directory: Path, train_config: _config.TrainConfig, action_shift: float = 0.0) -> Path:
    """Writes random weights (seeded) and LIBERO norm stats; ``action_shift`` moves the action quantiles."""
    torch.manual_seed(0)
    weights.save_weights(PI0Pytorch(train_config.model), directory)
    return write_norm_stats(directory, action_shift)


def write_norm_stats(directory: Path, action_shift: float = 0.0) -> Path:
    """LIBERO norm stats in ``directory/assets``; ``action_shift`` moves the action quantiles."""
    state = normalize.NormStats(mean=np.zeros(8), std=np.ones(8), q01=-np.ones(8), q99=np.ones(8))
    low, high = np.full(7, action_shift - 2.0), np.full(7, action_shift + 2.0)
    actions = normalize.NormStats(mean=(low + high) / 2, std=np.ones(7), q01=low, q99=high)
    normalize.save(directory / "assets" / ASSET_ID, {"state": state, "actions": actions})
    return directory


def libero_observation(seed: int, prompt: str | None = PROMPTS[0]) -> dict:
    rng = np.random.default_rng(seed)
    obs = {
        "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "observation/state": rng.uniform(-1, 1, 8).astype(np.float32),
    }
    if prompt is not None:
        obs["prompt"] = prompt
    return obs
