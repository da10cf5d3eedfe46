"""The PyTorch model behind a :class:`~openpi.policies.policy.Policy` (a :class:`PolicyModel` over ``PI0Pytorch``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openpi.models.observation import Observation
from openpi.models.pi0_config import Pi0Config
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.preprocessing import preprocess_observation
from openpi.policies.policy_model import PatchSelection, Sampled

logger = logging.getLogger(__name__)


class PytorchPolicyModel:
    """Runs a :class:`PI0Pytorch` in eval mode on ``device``, with pruning telemetry on."""

    def __init__(self, model: PI0Pytorch, device: str | torch.device) -> None:
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()
        if model.token_pruning_enabled:
            model.set_token_pruner_collect_stats(True)
        size = model.config.vision_config.image_size
        self._image_resolution = (size, size)

    @property
    def model(self) -> PI0Pytorch:
        return self._model

    @property
    def config(self) -> Pi0Config:
        return self._model.config

    @property
    def token_pruning_enabled(self) -> bool:
        return self._model.token_pruning_enabled

    @property
    def last_timing_ms(self) -> dict[str, float]:
        return self._model.last_timing_ms

    def get_token_pruning_stats(self) -> dict[str, float]:
        return self._model.get_token_pruning_stats()

    def nonfinite_parameters(self) -> list[str]:
        return nonfinite_parameters(self._model)

    def observation(self, batch: dict[str, Any]) -> Observation:
        return eval_observation(batch, self._image_resolution, self._device)

    def sample_noise(self, batch_size: int) -> np.ndarray:
        shape = (batch_size, self.config.action_horizon, self.config.action_dim)
        return self._model.sample_noise(shape, "cpu").numpy()

    def sample(self, observation: Observation, noise: np.ndarray | None = None, **sample_kwargs: Any) -> Sampled:
        noise_tensor = None if noise is None else torch.as_tensor(noise)
        if "prev_chunk" in sample_kwargs:  # real-time chunking: the previous chunk on the model's device
            sample_kwargs = {**sample_kwargs, "prev_chunk": torch.as_tensor(sample_kwargs["prev_chunk"])}
        actions = self._model.sample_actions(observation, noise=noise_tensor, **sample_kwargs)
        selection = last_patch_selection(self._model) if self.token_pruning_enabled else None
        return Sampled(actions.float().cpu().numpy(), selection)


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of ``model``'s floating-point tensors that hold NaN or infinity."""
    state = model.state_dict()
    return [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def eval_observation(batch: dict[str, Any], image_resolution: tuple[int, int], device: torch.device) -> Observation:
    """A model-input batch as a checked, eval-preprocessed :class:`Observation` on ``device``."""
    observation = Observation.from_dict(batch)
    checked = preprocess_observation(observation, train=False, image_resolution=image_resolution)
    return checked.to(device)


def default_device(device: str | None) -> str:
    """``device``, or CUDA when available, else the CPU."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def last_patch_selection(model: PI0Pytorch) -> PatchSelection:
    """The pruner's last eval selection as numpy (kept patches ``[B, N]`` and their votes)."""
    selection = model.pruner.last_selection
    kept = torch.zeros(selection.votes.shape, dtype=torch.bool, device=selection.votes.device)
    kept.scatter_(1, selection.kept_indices, selection.mask)  # [B, K] kept slots -> [B, N] patches
    return PatchSelection(kept.cpu().numpy(), selection.votes.cpu().numpy())


def load(config: Pi0Config, weights_file: Path, device: str | None) -> PytorchPolicyModel:
    """The model of ``config`` with ``weights_file`` loaded, on ``device`` (default: CUDA when available)."""
    device = default_device(device)
    model = PI0Pytorch(config)
    weights.load_weights(model, weights_file)
    logger.info("Serving %s through the PyTorch model on %s", weights_file, device)
    return PytorchPolicyModel(model, device)
