"""What a :class:`~openpi.policies.policy.Policy` needs of a model, whichever framework runs it: a numpy batch
(:mod:`openpi.models.batch`) in, numpy actions and the pruner's choice out. One adapter per framework implements it
(``pytorch_model.PytorchPolicyModel``, ``jax_model.JaxPolicyModel``)."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np

from openpi.models.pi0_config import Pi0Config


class PatchSelection(NamedTuple):
    """The pruner's choice over the pooled patches of a batch (camera-major, in the model's camera order)."""

    kept: np.ndarray  # [B, N] bool, the patches the pruner kept
    votes: np.ndarray  # [B, N] int, how many rows voted for each patch


class Sampled(NamedTuple):
    actions: np.ndarray  # [B, H, action_dim] float32
    selection: PatchSelection | None  # None without pruning
    decoding_failed: np.ndarray | None = None  # [B] bool, π0-FAST rows whose tokens did not decode (their actions: 0)


class PolicyModel(Protocol):
    """A π0 model behind a policy. ``config``, ``token_pruning_enabled``, ``last_timing_ms`` and
    ``get_token_pruning_stats`` carry the PyTorch model's names."""

    @property
    def model(self) -> Any:
        """What ``Policy.model`` returns: the object scripts set the pruning budget on (``set_token_pruner_*``)."""

    @property
    def config(self) -> Pi0Config: ...

    @property
    def token_pruning_enabled(self) -> bool: ...

    @property
    def last_timing_ms(self) -> dict[str, float]:
        """Wall times of the last call's parts (``prefix_ms``, ``denoise_ms``), where the model times them apart."""

    def get_token_pruning_stats(self) -> dict[str, float]:
        """The pruner's telemetry of the last call (empty without pruning)."""

    def nonfinite_parameters(self) -> list[str]:
        """The names of the weight tensors holding NaN or infinity (empty for sound weights)."""

    def observation(self, batch: dict[str, Any]) -> Any:
        """The framework's observation of a numpy batch, its images checked against the vision tower's resolution."""

    def sample_noise(self, batch_size: int) -> np.ndarray:
        """A draw of the sampling start point ``[batch_size, H, action_dim]``, as a call without noise draws it."""

    def sample(self, observation: Any, noise: np.ndarray | None = None, **sample_kwargs: Any) -> Sampled:
        """Samples an action chunk per observation, starting at ``noise [B, H, action_dim]`` (drawn when None)."""
