"""A policy: raw robot observations in, action chunks out, around a π0 / π0.5 model.

``infer`` runs the input transforms (robot mapping, normalisation, tokenisation, padding) per sample, batches the
samples, samples an action chunk with the model, and runs the output transforms (unnormalisation, robot mapping) per
sample.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from openpi import transforms as _transforms
from openpi.models.observation import Observation, random_observation
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.preprocessing import preprocess_observation
from openpi.policies import observation_contract

if TYPE_CHECKING:
    from openpi.policies.jax_model import JaxPolicyModel

# A request key (a bool, beside the observation) asking a pruning policy to return ``kept_patch_mask`` for that call.
KEPT_PATCHES_REQUEST_KEY = "return_kept_patches"


class Policy:
    """Runs ``model`` on raw observations; see the module docstring."""

    def __init__(
        self,
        model: PI0Pytorch | JaxPolicyModel,
        *,
        input_transforms: Sequence[_transforms.DataTransformFn] = (),
        output_transforms: Sequence[_transforms.DataTransformFn] = (),
        sample_kwargs: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        pytorch_device: str | torch.device = "cpu",
        batch_buckets: Sequence[int] | None = None,
    ) -> None:
        """Args:
        model: the π0 model (PyTorch, or the JAX one wrapped by ``JaxPolicyModel``); it is moved to
            ``pytorch_device`` and put in eval mode (with pruning telemetry on).
        input_transforms: per-sample transforms from a raw observation to model inputs (``image``, ``image_mask``,
            ``state``, ``tokenized_prompt``, ``tokenized_prompt_mask``).
        output_transforms: per-sample transforms of ``{"state", "actions"}`` back to robot actions.
        sample_kwargs: extra arguments of ``model.sample_actions`` (e.g. ``num_steps``).
        metadata: sent to clients by the server.
        pytorch_device: where the model runs.
        batch_buckets: batch sizes the model runs at (ascending); a call with B observations is padded to the
            smallest bucket >= B with copies of its last observation, whose results are dropped (exact: samples do not
            interact), so that a compiled model meets these batch sizes only. None runs every B as it comes.
        """
        if batch_buckets is not None and (not batch_buckets or list(batch_buckets) != sorted(set(batch_buckets))):
            raise ValueError(f"batch_buckets must be distinct ascending sizes, got {batch_buckets!r}")
        if batch_buckets is not None and batch_buckets[0] < 1:
            raise ValueError(f"batch_buckets must be >= 1, got {batch_buckets!r}")
        self.batch_buckets = None if batch_buckets is None else tuple(batch_buckets)
        self._device = torch.device(pytorch_device)
        self._model = model.to(self._device).eval()
        if model.token_pruning_enabled:
            model.set_token_pruner_collect_stats(True)
        # With pruning on, outputs gain ``kept_patch_mask`` ([N] bool over the pooled patches) when True, or for a
        # request that sets KEPT_PATCHES_REQUEST_KEY.
        self.return_kept_patches = False
        self.input_transforms = tuple(input_transforms)
        self.output_transforms = tuple(output_transforms)
        self._sample_kwargs = dict(sample_kwargs or {})
        self._metadata = dict(metadata or {})
        vision = model.config.vision_config
        self._image_resolution = (vision.image_size, vision.image_size)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    @property
    def model(self) -> PI0Pytorch | JaxPolicyModel:
        return self._model

    def infer(self, obs: dict, *, noise: np.ndarray | None = None) -> dict[str, Any]:
        """Returns ``{"actions": [H, action_dim], ..., "policy_timing": {"infer_ms", "prefix_ms", "denoise_ms"}}`` for
        one observation (``prefix_ms``: images, prompt and the language model's pass; ``denoise_ms``: the flow steps).

        ``noise`` (``[H, model_action_dim]``) fixes the sampling start point. With token pruning enabled the result
        also holds ``token_pruning`` (the pruner's statistics for this call), and ``kept_patch_mask`` when
        :attr:`return_kept_patches` is set or ``obs[KEPT_PATCHES_REQUEST_KEY]`` is true.

        Raises:
            KeyError, ValueError: the observation lacks a key or has a wrong shape or dtype.
        """
        outputs, extras = self._run([obs], None if noise is None else np.asarray(noise)[None])
        return {**_sample(outputs, 0), **extras}

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Runs the model once per batch size (default: every batch bucket, or 1) on a random model-ready observation
        (first-call allocations, kernel selection, compilation), so that the first real request does not pay for
        them."""
        for batch_size in batch_sizes or self.batch_buckets or (1,):
            observation = random_observation(self._model.config, batch_size).to(self._device)
            self._model.sample_actions(observation)

    def infer_many(self, observations: Sequence[dict], *, noise: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Like :meth:`infer` for each observation, run through the model together (the server's batching): one reply
        per observation, sharing the call's ``policy_timing`` and ``token_pruning``. ``noise`` is
        ``[B, H, model_action_dim]``."""
        outputs, extras = self._run(observations, noise)
        return [{**_sample(outputs, i), **extras} for i in range(len(observations))]

    def infer_batch(self, observations: Sequence[dict], *, noise: np.ndarray | None = None) -> dict[str, Any]:
        """Like :meth:`infer` for several observations run through the model together; the outputs gain a leading
        batch axis (``actions [B, H, action_dim]``) and ``noise`` is ``[B, H, model_action_dim]``."""
        outputs, extras = self._run(observations, noise)
        return {**outputs, **extras}

    def _run(self, observations: Sequence[dict], noise: np.ndarray | None) -> tuple[dict, dict]:
        """Returns the batched, output-transformed model outputs and the per-call extras (timing, pruning)."""
        if not observations:
            raise ValueError("A policy call needs at least one observation")
        to_model = _transforms.compose(self.input_transforms)
        validated = [observation_contract.validated_copy(obs) for obs in observations]
        kept_requested = [bool(obs.pop(KEPT_PATCHES_REQUEST_KEY, False)) for obs in validated]
        model_inputs = _transforms.stack_samples([to_model(obs) for obs in validated])
        batch_size = len(observations)
        padded_size = self._bucket(batch_size)
        observation = preprocess_observation(
            Observation.from_dict(_pad_batch(model_inputs, padded_size)),
            train=False,
            image_resolution=self._image_resolution,
        ).to(self._device)
        if noise is None and padded_size > batch_size:  # draw the real samples' noise as an unpadded call would
            config = self._model.config
            noise = self._model.sample_noise((batch_size, config.action_horizon, config.action_dim), "cpu").numpy()
        noise_tensor = None if noise is None else torch.as_tensor(_pad_batch(np.asarray(noise), padded_size))

        start = time.perf_counter()
        actions = self._model.sample_actions(observation, noise=noise_tensor, **self._sample_kwargs)
        actions = actions[:batch_size].float().cpu().numpy()
        timing = {"infer_ms": (time.perf_counter() - start) * 1000.0, **self._model.last_timing_ms}
        extras: dict[str, Any] = {"policy_timing": timing}
        if self._model.token_pruning_enabled:
            extras["token_pruning"] = {k: float(v) for k, v in self._model.get_token_pruning_stats().items()}

        to_robot = _transforms.compose(self.output_transforms)
        outputs = [
            to_robot({"state": model_inputs["state"][i], "actions": actions[i]}) for i in range(len(observations))
        ]
        if (self.return_kept_patches or any(kept_requested)) and self._model.token_pruning_enabled:
            for output, kept in zip(outputs, self._kept_patch_masks()[:batch_size], strict=True):
                output["kept_patch_mask"] = kept
        return _transforms.stack_samples(outputs), extras

    def _bucket(self, batch_size: int) -> int:
        """The batch size a call with ``batch_size`` observations runs at."""
        if self.batch_buckets is None:
            return batch_size
        for bucket in self.batch_buckets:
            if bucket >= batch_size:
                return bucket
        raise ValueError(f"{batch_size} observations exceed the largest batch bucket {self.batch_buckets[-1]}")

    def _kept_patch_masks(self) -> np.ndarray:
        """``[B, N]`` bool over the pooled patches (camera-major, in the model's camera order) the pruner kept."""
        selection = self._model.pruner.last_selection
        kept = torch.zeros(selection.votes.shape, dtype=torch.bool, device=selection.votes.device)
        kept.scatter_(1, selection.kept_indices, selection.mask)
        return kept.cpu().numpy()


def _pad_batch(value: Any, size: int) -> Any:
    """Pads the leading batch axis of every array or list in ``value`` (nested dicts) to ``size`` with copies of its
    last row."""
    if isinstance(value, Mapping):
        return {key: _pad_batch(v, size) for key, v in value.items()}
    missing = size - len(value)
    if missing == 0:
        return value
    if isinstance(value, list):  # text
        return value + value[-1:] * missing
    return np.concatenate([value, np.repeat(value[-1:], missing, axis=0)])


def _sample(value: Any, index: int) -> Any:
    """Sample ``index`` of a batched output (nested dicts of arrays with a leading batch axis)."""
    if isinstance(value, Mapping):
        return {key: _sample(v, index) for key, v in value.items()}
    return value[index]
