"""The real-time chunking fields of a request, and how a batch of them reaches the model (docs/rtc.md).

A client executing chunks asynchronously sends, beside its observation, ``prev_actions`` (the previous chunk's actions
from the observation's step on, not yet executed, ``[L, robot_action_dim]`` in robot units), ``inference_delay`` (how
many of them will have run when the reply arrives, in control steps) and optionally ``rtc_mode`` ("guided" or
"trained", default: the model's) and ``execution_horizon`` (where the pull toward ``prev_actions`` ends). A request
without ``prev_actions`` is sampled plainly; ``inference_delay``, ``rtc_mode`` and ``execution_horizon`` need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from openpi.models.pi0_config import RTC_MODES

PREV_ACTIONS_KEY = "prev_actions"
INFERENCE_DELAY_KEY = "inference_delay"
RTC_MODE_KEY = "rtc_mode"
EXECUTION_HORIZON_KEY = "execution_horizon"
RTC_KEYS = (PREV_ACTIONS_KEY, INFERENCE_DELAY_KEY, RTC_MODE_KEY, EXECUTION_HORIZON_KEY)
_OPTION_KEYS = (INFERENCE_DELAY_KEY, RTC_MODE_KEY, EXECUTION_HORIZON_KEY)


class RTCOptions(NamedTuple):
    """One request's real-time chunking, ``prev_chunk`` in the model's units (normalised, padded)."""

    prev_chunk: np.ndarray  # [L, model_action_dim]
    delay: int
    horizon: int | None
    mode: str | None


def validated_option(key: str, value: Any) -> Any:
    """``inference_delay``/``execution_horizon`` as a non-negative int, ``rtc_mode`` as one of the modes."""
    if key == RTC_MODE_KEY:
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str) or value not in RTC_MODES:
            raise ValueError(f"{key!r} must be one of {RTC_MODES}, got {value!r}")
        return value
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "iu" or int(array) < 0:
        raise ValueError(f"{key!r} must be a non-negative integer (control steps), got {value!r}")
    return int(array)


def split(obs: dict) -> tuple[dict, dict]:
    """``obs`` without its RTC fields, and those fields; options without ``prev_actions`` are refused, named."""
    fields = {key: obs.pop(key) for key in RTC_KEYS if key in obs}
    orphans = [key for key in _OPTION_KEYS if key in fields and PREV_ACTIONS_KEY not in fields]
    if orphans:
        raise ValueError(f"{orphans} need {PREV_ACTIONS_KEY!r}: the previous chunk's unexecuted actions")
    return obs, fields


def options(fields: Mapping[str, Any], prev_chunk: np.ndarray, horizon: int, modes: Sequence[str]) -> RTCOptions:
    """The request's options once its ``prev_actions`` went through the input transforms (``prev_chunk``), checked
    against the model's ``horizon`` and the ``modes`` it serves."""
    length = prev_chunk.shape[0]
    if not 1 <= length <= horizon:
        raise ValueError(f"{PREV_ACTIONS_KEY!r} holds {length} actions; this policy takes 1 to {horizon}")
    delay = fields.get(INFERENCE_DELAY_KEY, 0)
    if delay > length:
        raise ValueError(f"{INFERENCE_DELAY_KEY!r} ({delay}) exceeds the {length} actions of {PREV_ACTIONS_KEY!r}")
    mode = fields.get(RTC_MODE_KEY)
    if mode is not None and mode not in modes:
        raise ValueError(f"{RTC_MODE_KEY!r} {mode!r} is not served by this policy; it serves {tuple(modes)}")
    return RTCOptions(np.asarray(prev_chunk, dtype=np.float32), delay, fields.get(EXECUTION_HORIZON_KEY), mode)


def batch_kwargs(
    samples: Sequence[RTCOptions | None], horizon: int, default_horizon: int | None, default_mode: str
) -> dict[str, Any]:
    """The sampling arguments of a batch (``prev_chunk [B, H, A]``, per-sample delay, horizon and mode); empty when
    no sample asks for RTC. A sample without it gets delay 0, horizon 0 and guided mode: nothing pulls it."""
    if all(sample is None for sample in samples):
        return {}
    action_dim = next(s for s in samples if s is not None).prev_chunk.shape[-1]
    prev = np.zeros((len(samples), horizon, action_dim), dtype=np.float32)
    rows = []
    for i, sample in enumerate(samples):
        if sample is None:
            rows.append((0, 0, "guided"))
            continue
        length = sample.prev_chunk.shape[0]
        prev[i, :length] = sample.prev_chunk
        rows.append(
            (sample.delay, min(length, sample.horizon or default_horizon or length), sample.mode or default_mode)
        )
    delays, horizons, modes = (list(column) for column in zip(*rows, strict=True))
    return {"prev_chunk": prev, "inference_delay": delays, "execution_horizon": horizons, "rtc_mode": modes}
