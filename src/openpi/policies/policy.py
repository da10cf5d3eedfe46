"""A policy: raw robot observations in, action chunks out, around a π0 / π0.5 model.

``infer`` runs the input transforms (robot mapping, normalisation, tokenisation, padding) per sample, batches the
samples, samples an action chunk with the model, and runs the output transforms (unnormalisation, robot mapping) per
sample.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from openpi import transforms as _transforms
from openpi.models.batch import random_batch
from openpi.models.pi0_config import Pi0Config, RTCConfig
from openpi.policies import observation_contract, rtc_request
from openpi.policies.observation_contract import KEPT_PATCHES_REQUEST_KEY
from openpi.policies.policy_model import PatchSelection, PolicyModel

# Reply key of a π0-FAST policy: True where the generated tokens did not decode into a chunk. The robot then gets the
# all-zero normalised chunk (after unnormalisation: the middle of each dimension's training range).
DECODING_FAILED_KEY = "decoding_failed"


@dataclasses.dataclass(frozen=True)
class PreparedObservation:
    """One observation that passed the input contract and the input transforms: one sample of model inputs, and
    whether its request asked for ``kept_patch_mask``. What a batch is made of."""

    inputs: dict[str, Any]
    return_kept_patches: bool = False
    rtc: rtc_request.RTCOptions | None = None  # the request's real-time chunking (None: plain sampling)


class Policy:
    """Runs ``model`` on raw observations; see the module docstring."""

    def __init__(
        self,
        model: PolicyModel,
        *,
        input_transforms: Sequence[_transforms.DataTransformFn] = (),
        output_transforms: Sequence[_transforms.DataTransformFn] = (),
        sample_kwargs: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        batch_buckets: Sequence[int] | None = None,
        observation_keys: Collection[str] | None = None,
    ) -> None:
        """Args:
        model: the π0 model behind its framework's adapter (``pytorch_model.PytorchPolicyModel`` or
            ``jax_model.JaxPolicyModel``): numpy batches in, numpy actions out.
        input_transforms: per-sample transforms from a raw observation to model inputs (``image``, ``image_mask``,
            ``state``, ``tokenized_prompt``, ``tokenized_prompt_mask``).
        output_transforms: per-sample transforms of ``{"state", "actions"}`` back to robot actions.
        sample_kwargs: extra arguments of the model's sampling (e.g. ``num_steps``).
        metadata: sent to clients by the server.
        batch_buckets: batch sizes the model runs at (ascending); a call with B observations is padded to the
            smallest bucket >= B with copies of its last observation, whose results are dropped (exact: samples do not
            interact), so that a compiled model meets these batch sizes only. None runs every B as it comes.
        observation_keys: the keys an observation may hold besides ``prompt`` and the request options (the robot's,
            ``DataConfig.observation_keys``); others are refused, named. None accepts any.
        """
        if batch_buckets is not None and (not batch_buckets or list(batch_buckets) != sorted(set(batch_buckets))):
            raise ValueError(f"batch_buckets must be distinct ascending sizes, got {batch_buckets!r}")
        if batch_buckets is not None and batch_buckets[0] < 1:
            raise ValueError(f"batch_buckets must be >= 1, got {batch_buckets!r}")
        self.batch_buckets = None if batch_buckets is None else tuple(batch_buckets)
        self._model = model
        self.observation_keys = None if observation_keys is None else tuple(observation_keys)
        # With pruning on, outputs gain ``kept_patch_mask`` ([N] bool over the pooled patches) when True; otherwise
        # only the replies to requests that set KEPT_PATCHES_REQUEST_KEY do.
        self.return_kept_patches = False
        # With pruning on, the kept patches and votes of the last call's observations ([B, N] each).
        self.last_patch_selection: PatchSelection | None = None
        self.input_transforms = tuple(input_transforms)
        self.output_transforms = tuple(output_transforms)
        self._sample_kwargs = dict(sample_kwargs or {})
        self._metadata = dict(metadata or {})

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    @property
    def model(self) -> Any:
        """The model's controls (``config``, ``token_pruning_enabled``, ``set_token_pruner_*``,
        ``get_token_pruning_stats``): the ``PI0Pytorch`` itself, or the ``JaxPolicyModel``."""
        return self._model.model

    def infer(self, obs: dict, *, noise: np.ndarray | None = None) -> dict[str, Any]:
        """Returns ``{"actions": [H, action_dim], ..., "policy_timing": {"infer_ms", "prefix_ms", "denoise_ms"}}`` for
        one observation (``prefix_ms``: images, prompt and the language model's pass; ``denoise_ms``: the flow steps).

        ``noise`` (``[H, model_action_dim]``) fixes the sampling start point. With token pruning enabled the result
        also holds ``token_pruning`` (the pruner's statistics for this call), and ``kept_patch_mask`` when
        :attr:`return_kept_patches` is set or ``obs[KEPT_PATCHES_REQUEST_KEY]`` is true.

        Raises:
            KeyError, ValueError: the observation lacks a key or has a wrong shape or dtype.
        """
        return self.infer_prepared([self.prepare(obs)], noise=None if noise is None else np.asarray(noise)[None])[0]

    def prepare(self, obs: dict) -> PreparedObservation:
        """Checks ``obs`` against the input contract and runs the input transforms (robot mapping, normalisation,
        tokenisation, padding): everything that can refuse one observation, done before it joins a batch.

        Raises:
            KeyError, ValueError, TypeError: naming the key that is missing or wrong.
        """
        validated = observation_contract.validated_copy(obs, self.observation_keys)
        asked = validated.pop(KEPT_PATCHES_REQUEST_KEY, False)
        validated, rtc_fields = rtc_request.split(validated)
        if rtc_fields:  # the previous chunk goes through the transforms as the training actions do
            validated["actions"] = np.asarray(rtc_fields[rtc_request.PREV_ACTIONS_KEY], dtype=np.float32)
        inputs = _transforms.compose(self.input_transforms)(validated)
        if not rtc_fields:
            return PreparedObservation(inputs, asked)
        config = self._model.config
        rtc = rtc_request.options(rtc_fields, inputs.pop("actions"), config.action_horizon, self.rtc_modes)
        return PreparedObservation(inputs, asked, rtc)

    @property
    def rtc_modes(self) -> tuple[str, ...]:
        """The real-time chunking modes the model serves (docs/rtc.md); none for π0-FAST, which decodes tokens."""
        rtc = _rtc_config(self._model.config)
        return () if rtc is None else rtc.modes

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Runs the model once per batch size (default: every batch bucket, or 1) on a random batch with the policy's
        sampling arguments (first-call allocations, kernel selection, compilation), so that the first real request
        does not pay for them."""
        for batch_size in batch_sizes or self.batch_buckets or (1,):
            observation = self._model.observation(random_batch(self._model.config, batch_size))
            self._model.sample(observation, **self._sample_kwargs)

    def infer_many(self, observations: Sequence[dict], *, noise: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Like :meth:`infer` for each observation, run through the model together (the server's batching): one reply
        per observation, sharing the call's ``policy_timing`` and ``token_pruning``. ``noise`` is
        ``[B, H, model_action_dim]``."""
        return self.infer_prepared([self.prepare(obs) for obs in observations], noise=noise)

    def infer_prepared(
        self, prepared: Sequence[PreparedObservation], *, noise: np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`infer_many` for observations already through :meth:`prepare`: one model call, one reply each."""
        outputs, extras = self._run(prepared, noise)
        kept = self.last_patch_selection.kept if self.last_patch_selection is not None else None
        replies = []
        for i, sample in enumerate(prepared):
            reply = {**_sample(outputs, i), **extras}
            if kept is not None and (self.return_kept_patches or sample.return_kept_patches):
                reply["kept_patch_mask"] = kept[i]
            replies.append(reply)
        return replies

    def infer_batch(self, observations: Sequence[dict], *, noise: np.ndarray | None = None) -> dict[str, Any]:
        """Like :meth:`infer` for several observations run through the model together; the outputs gain a leading
        batch axis (``actions [B, H, action_dim]``; ``kept_patch_mask [B, N]`` when any request or
        :attr:`return_kept_patches` asks for it) and ``noise`` is ``[B, H, model_action_dim]``."""
        prepared = [self.prepare(obs) for obs in observations]
        outputs, extras = self._run(prepared, noise)
        asked = self.return_kept_patches or any(p.return_kept_patches for p in prepared)
        if asked and self.last_patch_selection is not None:
            extras["kept_patch_mask"] = self.last_patch_selection.kept
        return {**outputs, **extras}

    def _run(self, prepared: Sequence[PreparedObservation], noise: np.ndarray | None) -> tuple[dict, dict]:
        """Returns the batched, output-transformed model outputs and the per-call extras (timing, pruning)."""
        if not prepared:
            raise ValueError("A policy call needs at least one observation")
        model_inputs = _transforms.stack_samples([p.inputs for p in prepared])
        batch_size = len(prepared)
        padded_size = self._bucket(batch_size)
        observation = self._model.observation(_pad_batch(model_inputs, padded_size))
        if noise is None and padded_size > batch_size:  # draw the real samples' noise as an unpadded call would
            noise = self._model.sample_noise(batch_size)
        padded_noise = None if noise is None else _pad_batch(np.asarray(noise), padded_size)

        config = self._model.config
        default_mode = _default_mode(self.rtc_modes)
        samples = [p.rtc for p in prepared]
        rtc = _rtc_config(config)
        horizons = (config.action_horizon, None if rtc is None else rtc.execution_horizon)
        rtc_kwargs = rtc_request.batch_kwargs(samples, *horizons, default_mode)
        start = time.perf_counter()
        sampled = self._model.sample(
            observation, padded_noise, **self._sample_kwargs, **_pad_batch(rtc_kwargs, padded_size)
        )
        timing = {"infer_ms": (time.perf_counter() - start) * 1000.0, **self._model.last_timing_ms}
        extras: dict[str, Any] = {"policy_timing": timing}
        if self._model.token_pruning_enabled:
            extras["token_pruning"] = {k: float(v) for k, v in self._model.get_token_pruning_stats().items()}
        selection = sampled.selection
        self.last_patch_selection = None if selection is None else PatchSelection(*(x[:batch_size] for x in selection))

        to_robot = _transforms.compose(self.output_transforms)
        outputs = [
            to_robot({"state": model_inputs["state"][i], "actions": sampled.actions[i]}) for i in range(batch_size)
        ]
        if sampled.decoding_failed is not None:  # π0-FAST: the rows whose actions are the fallback chunk
            for output, failed in zip(outputs, sampled.decoding_failed, strict=False):
                output[DECODING_FAILED_KEY] = np.bool_(failed)
        return _transforms.stack_samples(outputs), extras

    def _bucket(self, batch_size: int) -> int:
        """The batch size a call with ``batch_size`` observations runs at."""
        if self.batch_buckets is None:
            return batch_size
        for bucket in self.batch_buckets:
            if bucket >= batch_size:
                return bucket
        raise ValueError(f"{batch_size} observations exceed the largest batch bucket {self.batch_buckets[-1]}")


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


def _default_mode(modes: Sequence[str]) -> str:
    """A model trained with RTC continues its committed prefix as trained; any other is guided."""
    return "trained" if "trained" in modes else "guided"


def _rtc_config(config: Any) -> RTCConfig | None:
    """A flow model's real-time chunking settings; None for π0-FAST."""
    return config.rtc if isinstance(config, Pi0Config) else None
