"""The JAX model behind a :class:`~openpi.policies.policy.Policy`: the policy's model interface over ``models_jax``.

A policy's input pipeline (transforms, image preprocessing) produces torch observations; this wrapper hands them to
the JAX model at its boundary (channels-last numpy) and returns torch tensors, so the policy, the server and every
client work the same with either framework. The pruning setters and telemetry keep the PyTorch model's names.
"""

from __future__ import annotations

import jax
import numpy as np
import torch

from openpi.models.observation import Observation
from openpi.models.pi0_config import Pi0Config
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0 import Pi0
from openpi.models_pytorch.token_pruner import Selection


class _PrunerView:
    """What the policy reads of a pruner: the last selection (kept patches per sample)."""

    def __init__(self) -> None:
        self.last_selection: Selection | None = None


class JaxPolicyModel:
    """Wraps a JAX :class:`Pi0` with the methods a policy calls on a model."""

    def __init__(self, model: Pi0, seed: int = 0):
        self.jax_model = model
        self.last_timing_ms: dict[str, float] = {}
        self._rng = jax.random.key(seed)
        self._pruner = _PrunerView()

    @property
    def config(self) -> Pi0Config:
        return self.jax_model.config

    @property
    def token_pruning_enabled(self) -> bool:
        return self.config.token_pruning_enabled

    @property
    def pruner(self) -> _PrunerView:
        if not self.token_pruning_enabled:
            raise RuntimeError("Token pruning is disabled; build the model with token_pruning_enabled=True")
        return self._pruner

    def to(self, device: torch.device | str) -> JaxPolicyModel:
        """JAX places arrays itself (on its default device); the torch device only holds the inputs."""
        return self

    def eval(self) -> JaxPolicyModel:
        return self

    def set_token_pruner_collect_stats(self, enabled: bool) -> None:
        self.jax_model.collect_stats = enabled

    def set_token_pruner_keep_ratio(self, keep_ratio: float | None) -> None:
        """Inference budget as a fraction of valid patches; None restores the config's value."""
        if keep_ratio is not None and not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be None or a number in (0, 1], got {keep_ratio!r}")
        self.jax_model.keep_ratio = self.config.token_prune_keep_ratio if keep_ratio is None else float(keep_ratio)

    def set_token_pruner_keep_tokens(self, keep_tokens: int | None) -> None:
        """Inference budget of K patches; None restores the config's value."""
        if keep_tokens is not None and (not isinstance(keep_tokens, int) or keep_tokens < 1):
            raise ValueError(f"keep_tokens must be None or an int >= 1, got {keep_tokens!r}")
        self.jax_model.keep_tokens = self.config.token_prune_keep_tokens if keep_tokens is None else keep_tokens

    def get_token_pruning_stats(self) -> dict[str, float]:
        return dict(self.jax_model.last_stats) if self.token_pruning_enabled else {}

    def sample_noise(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        return torch.randn(shape, dtype=torch.float32, device=device)

    def sample_actions(
        self, observation: Observation, *, noise: torch.Tensor | None = None, num_steps: int = 10
    ) -> torch.Tensor:
        """Actions ``[B, H, action_dim]`` (float32, CPU) for a torch observation."""
        self._rng, rng = jax.random.split(self._rng)
        sampled = self.jax_model.sample(
            rng,
            JaxObservation.from_dict(observation.to_dict()),
            num_steps=num_steps,
            noise=None if noise is None else noise.float().cpu().numpy(),
        )
        actions = np.array(sampled.actions)  # waits for the device
        # One compiled call: the prefix and the denoising steps are not timed apart (the policy reports infer_ms).
        self.last_timing_ms = {}
        if sampled.keep is not None:
            self._pruner.last_selection = _selection(np.asarray(sampled.keep), np.asarray(sampled.votes))
        return torch.from_numpy(actions)


def _selection(keep: np.ndarray, votes: np.ndarray) -> Selection:
    """The :class:`Selection` of a ``[B, N]`` kept-patch mask (kept patches first, in order)."""
    order = np.argsort(~keep, axis=1, kind="stable")
    counts = keep.sum(axis=1)
    width = int(counts.max()) if counts.size else 0
    mask = np.arange(width)[None, :] < counts[:, None]
    return Selection(
        torch.from_numpy(order[:, :width].copy()), torch.from_numpy(mask), torch.from_numpy(votes.astype(np.int64))
    )
