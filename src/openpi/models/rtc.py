"""The per-sample settings of a real-time chunking call, shared by both frameworks' samplers (docs/rtc.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from openpi.models.pi0_config import RTC_MODES, RTCConfig


class RTCSettings(NamedTuple):
    """Per sample: d (the frozen actions), s (where the prefix weights reach 0; d <= s <= L) and the mode."""

    delay: np.ndarray  # [B] int64
    horizon: np.ndarray  # [B] int64
    trained: np.ndarray  # [B] bool, hold the committed prefix clean (trained RTC) instead of guiding


def resolve(
    config: RTCConfig,
    prev_shape: tuple[int, ...],
    expected: tuple[int, int, int],
    inference_delay: Any,
    execution_horizon: Any,
    rtc_mode: str | Sequence[str] | None,
) -> RTCSettings:
    """Checks a previous chunk of ``prev_shape [B, L, A]`` against the batch ``expected [B, H, A]`` and resolves the
    per-sample settings: ``inference_delay`` in ``[0, L]``, ``execution_horizon`` (default: the config's, else L)
    clipped to ``[d, L]``, ``rtc_mode`` (default: "trained" for a model trained with RTC, else "guided"); each one value
    or one per sample."""
    batch, horizon_len, action_dim = expected
    if len(prev_shape) != 3 or prev_shape[0] != batch or prev_shape[1] > horizon_len or prev_shape[2] != action_dim:
        raise ValueError(f"prev_chunk must be [{batch}, <= {horizon_len}, {action_dim}], got {list(prev_shape)}")
    length = prev_shape[1]
    delay = _per_sample(inference_delay, batch)
    if (delay < 0).any() or (delay > length).any():
        raise ValueError(f"inference_delay must be in [0, {length}] (the previous chunk's length): {delay.tolist()}")
    default_horizon = config.execution_horizon or length
    horizon = _per_sample(default_horizon if execution_horizon is None else execution_horizon, batch)
    horizon = np.maximum(np.minimum(horizon, length), delay)
    default_mode = "trained" if "trained" in config.modes else "guided"
    modes = [rtc_mode or default_mode] * batch if rtc_mode is None or isinstance(rtc_mode, str) else list(rtc_mode)
    if len(modes) != batch or any(m not in RTC_MODES for m in modes):
        raise ValueError(f"rtc_mode must be one of {RTC_MODES} (or one per sample of {batch}), got {rtc_mode!r}")
    if "trained" in modes and "trained" not in config.modes:
        raise ValueError("rtc_mode 'trained' needs a model trained with rtc.training_max_delay > 0; use 'guided'")
    return RTCSettings(delay, horizon, np.array([m == "trained" for m in modes]))


def _per_sample(value: Any, batch: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.int64)
    if array.ndim == 0:
        return np.full(batch, int(array), dtype=np.int64)
    if array.shape != (batch,):
        raise ValueError(f"Per-sample RTC values need one per sample ({batch}), got shape {list(array.shape)}")
    return array
