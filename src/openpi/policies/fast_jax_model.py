"""The JAX π0-FAST behind a :class:`~openpi.policies.policy.Policy` (a :class:`PolicyModel`): decodes tokens over the
published orbax tree, then reads the action chunk of every row back, reporting the rows that did not decode. Serving
a JAX π0-FAST checkpoint needs no torch and no conversion."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0_fast import Pi0Fast
from openpi.policies.fast_transforms import FastTokenizerSpec, decode_actions
from openpi.policies.jax_model import checked_observation, nonfinite_leaves
from openpi.policies.policy_model import Sampled

logger = logging.getLogger(__name__)


class FastJaxPolicyModel:
    """Runs a JAX :class:`Pi0Fast` (on JAX's default device). ``sample`` takes ``max_decoding_steps`` and
    ``temperature`` (the config's by default); each call draws its own key for temperature sampling."""

    def __init__(self, model: Pi0Fast, tokenizer: FastTokenizerSpec, seed: int = 0) -> None:
        if model.config.token_pruning_enabled:
            raise ValueError(
                "The JAX π0-FAST does not prune image tokens: serve its PyTorch conversion "
                "(openpi.conversion.convert.convert_fast_params_dir) or set token_pruning_enabled=False"
            )
        self._model = model
        self._tokenizer = tokenizer
        self._rng = jax.random.key(seed)
        size = model.config.vision_config.image_size
        self._image_resolution = (size, size)
        self.last_timing_ms: dict[str, float] = {}

    @property
    def model(self) -> Pi0Fast:
        return self._model

    @property
    def config(self) -> Pi0FastConfig:
        return self._model.config

    @property
    def token_pruning_enabled(self) -> bool:
        return False

    def get_token_pruning_stats(self) -> dict[str, float]:
        return {}

    def nonfinite_parameters(self) -> list[str]:
        return nonfinite_leaves(self._model.params())

    def observation(self, batch: dict[str, Any]) -> JaxObservation:
        return checked_observation(batch, self._image_resolution)

    def sample_noise(self, batch_size: int) -> np.ndarray:
        """Zeros: decoding draws no noise (the policy passes it through unused)."""
        return np.zeros((batch_size, self.config.action_horizon, self.config.action_dim), np.float32)

    def sample(
        self,
        observation: JaxObservation,
        noise: np.ndarray | None = None,
        max_decoding_steps: int | None = None,
        temperature: float | None = None,
    ) -> Sampled:
        self._rng, rng = jax.random.split(self._rng)
        decoded = self._model.sample_tokens(observation, max_decoding_steps, temperature, rng)
        tokens = np.asarray(decoded.tokens)  # waits for the device
        self.last_timing_ms = {"decode_steps": float(decoded.steps)}
        chunks, failed = decode_actions(self._tokenizer.load(), tokens)
        return Sampled(chunks, None, failed)


def load(config: Pi0FastConfig, checkpoint_dir: Path, tokenizer: FastTokenizerSpec) -> FastJaxPolicyModel:
    """The JAX π0-FAST of ``config`` restored (strictly) from ``checkpoint_dir/params``."""
    logger.info("Serving %s through the JAX π0-FAST model on %s", checkpoint_dir, jax.devices()[0])
    return FastJaxPolicyModel(Pi0Fast.from_checkpoint(checkpoint_dir, config), tokenizer)
