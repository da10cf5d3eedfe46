"""The PyTorch π0-FAST behind a :class:`~openpi.policies.policy.Policy` (a :class:`PolicyModel`): decodes tokens with
the KV cache, then reads the action chunk of every row back, reporting the rows that did not decode."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openpi.models.observation import Observation
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch
from openpi.policies.fast_transforms import FastTokenizerSpec, decode_actions
from openpi.policies.policy_model import Sampled
from openpi.policies.pytorch_model import default_device, eval_observation, nonfinite_parameters

logger = logging.getLogger(__name__)


class FastPytorchPolicyModel:
    """Runs a :class:`Pi0FastPytorch` in eval mode on ``device``. ``sample`` takes ``max_decoding_steps`` and
    ``temperature`` (the config's by default); noise is not used."""

    def __init__(self, model: Pi0FastPytorch, device: str | torch.device, tokenizer: FastTokenizerSpec) -> None:
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()
        if model.token_pruning_enabled:
            model.pruner.collect_stats = True
        self._tokenizer = tokenizer
        size = model.config.vision_config.image_size
        self._image_resolution = (size, size)
        self.last_timing_ms: dict[str, float] = {}

    @property
    def model(self) -> Pi0FastPytorch:
        return self._model

    @property
    def config(self) -> Pi0FastConfig:
        return self._model.config

    @property
    def token_pruning_enabled(self) -> bool:
        return self._model.token_pruning_enabled

    def get_token_pruning_stats(self) -> dict[str, float]:
        return self._model.pruner.stats() if self.token_pruning_enabled else {}

    def nonfinite_parameters(self) -> list[str]:
        return nonfinite_parameters(self._model)

    def observation(self, batch: dict[str, Any]) -> Observation:
        return eval_observation(batch, self._image_resolution, self._device)

    def sample_noise(self, batch_size: int) -> np.ndarray:
        """Zeros: decoding draws no noise (the policy passes it through unused)."""
        return np.zeros((batch_size, self.config.action_horizon, self.config.action_dim), np.float32)

    def sample(
        self,
        observation: Observation,
        noise: np.ndarray | None = None,
        max_decoding_steps: int | None = None,
        temperature: float | None = None,
    ) -> Sampled:
        decoded = self._model.sample_tokens(observation, max_decoding_steps, temperature)
        self.last_timing_ms = {"decode_steps": float(decoded.steps)}
        chunks, failed = decode_actions(self._tokenizer.load(), decoded.tokens.cpu().numpy())
        return Sampled(chunks, None, failed)


def load(config: Pi0FastConfig, weights_file: Path, device: str | None, tokenizer: FastTokenizerSpec):
    """The π0-FAST model of ``config`` with ``weights_file`` loaded, on ``device`` (default: CUDA when available)."""
    device = default_device(device)
    model = Pi0FastPytorch(config)
    weights.load_weights(model, weights_file)
    logger.info("Serving %s through the PyTorch π0-FAST model on %s", weights_file, device)
    return FastPytorchPolicyModel(model, device, tokenizer)
