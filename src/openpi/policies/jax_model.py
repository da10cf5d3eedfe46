"""The JAX model behind a :class:`~openpi.policies.policy.Policy` (a :class:`PolicyModel` over ``models_jax``).

Numpy batches go straight into a :class:`JaxObservation`: serving a JAX checkpoint needs no torch. The adapter is
also what ``Policy.model`` returns: it carries the PyTorch model's pruning controls (``set_token_pruner_*``,
``get_token_pruning_stats``), so scripts set a budget the same way with either framework.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from openpi.models.batch import check_image_resolution
from openpi.models.pi0_config import Pi0Config
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0 import Pi0
from openpi.policies.policy_model import PatchSelection, Sampled

logger = logging.getLogger(__name__)


class JaxPolicyModel:
    """Runs a JAX :class:`Pi0` (on JAX's default device), with pruning telemetry on."""

    def __init__(self, model: Pi0, seed: int = 0) -> None:
        self.jax_model = model
        # One compiled call: the prefix and the denoising steps are not timed apart (the policy reports infer_ms).
        self.last_timing_ms: dict[str, float] = {}
        self._rng = jax.random.key(seed)
        size = model.config.vision_config.image_size
        self._image_resolution = (size, size)
        if self.token_pruning_enabled:
            self.set_token_pruner_collect_stats(True)

    @property
    def model(self) -> JaxPolicyModel:
        return self

    @property
    def config(self) -> Pi0Config:
        return self.jax_model.config

    @property
    def token_pruning_enabled(self) -> bool:
        return self.config.token_pruning_enabled

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

    def nonfinite_parameters(self) -> list[str]:
        return nonfinite_leaves(self.jax_model.params())

    def observation(self, batch: dict[str, Any]) -> JaxObservation:
        return checked_observation(batch, self._image_resolution)

    def sample_noise(self, batch_size: int) -> np.ndarray:
        self._rng, rng = jax.random.split(self._rng)
        shape = (batch_size, self.config.action_horizon, self.config.action_dim)
        return np.asarray(jax.random.normal(rng, shape, jnp.float32))

    def sample(
        self, observation: JaxObservation, noise: np.ndarray | None = None, num_steps: int = 10, **rtc_kwargs: Any
    ) -> Sampled:
        self._rng, rng = jax.random.split(self._rng)
        noise = None if noise is None else np.asarray(noise, np.float32)
        sampled = self.jax_model.sample(rng, observation, num_steps=num_steps, noise=noise, **rtc_kwargs)
        actions = np.array(sampled.actions)  # waits for the device
        if sampled.keep is None:
            return Sampled(actions, None)
        return Sampled(actions, PatchSelection(np.asarray(sampled.keep), np.asarray(sampled.votes)))


def nonfinite_leaves(params: Any) -> list[str]:
    """The paths of the parameter leaves holding NaN or infinity."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return [jax.tree_util.keystr(path) for path, leaf in leaves if not bool(jnp.isfinite(leaf).all())]


def checked_observation(batch: dict[str, Any], resolution: tuple[int, int]) -> JaxObservation:
    """The :class:`JaxObservation` of a numpy batch, its images checked against the vision tower's ``resolution``."""
    observation = JaxObservation.from_dict(batch)
    for name, image in observation.images.items():
        check_image_resolution(name, image.shape[1:3], resolution)  # [B, H, W, 3]
    return observation


def load(config: Pi0Config, checkpoint_dir: Path) -> JaxPolicyModel:
    """The JAX model of ``config`` restored (strictly) from ``checkpoint_dir/params``."""
    logger.info("Serving %s through the JAX model on %s", checkpoint_dir, jax.devices()[0])
    return JaxPolicyModel(Pi0.from_checkpoint(checkpoint_dir, config))
