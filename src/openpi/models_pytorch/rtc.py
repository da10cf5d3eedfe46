"""Real-time chunking in PyTorch: the previous chunk's prefix weights, the guidance weight, training-time delays.

Conventions (the model's): time runs from 1 (noise) to 0 (actions), ``x_t = t * noise + (1 - t) * actions`` and the
network predicts ``v = noise - actions``, so the clean estimate at ``x_t`` is ``x_t - t * v``. A chunk's action ``i``
is the ``i``-th control step after the observation; the previous chunk is given from the same step on (its actions
that will not have run when the inference started), so that action ``i`` of both chunks is the same step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from openpi.models.pi0_config import RTC_MODES, RTCConfig


class RTCRequest(NamedTuple):
    """One sampling call's real-time chunking, per sample of the batch."""

    prev_chunk: torch.Tensor  # [B, H, A] the previous chunk's actions at the new chunk's steps (zeros past its end)
    delay: torch.Tensor  # [B] long, d: actions that run before the new chunk arrives (frozen)
    horizon: torch.Tensor  # [B] long, s >= d: the prefix weights are 0 from action s on
    trained: torch.Tensor  # [B] bool, hold the committed prefix clean (trained RTC) instead of guiding


def make_request(
    config: RTCConfig,
    shape: tuple[int, int, int],
    prev_chunk: torch.Tensor | None,
    inference_delay: int | Sequence[int] | torch.Tensor,
    execution_horizon: int | Sequence[int] | torch.Tensor | None,
    rtc_mode: str | Sequence[str] | None,
    device: torch.device,
) -> RTCRequest | None:
    """The request of a batch of ``shape [B, H, A]`` (None without a previous chunk: plain sampling).

    ``prev_chunk [B, L, A]`` (L <= H, padded with zeros to H); ``inference_delay``, ``execution_horizon`` (default:
    the config's, else L) and ``rtc_mode`` (default: "trained" for a model trained with RTC, else "guided") are one
    value or one per sample. The horizon is clipped to ``[d, L]``.
    """
    if prev_chunk is None:
        return None
    batch, horizon_len, action_dim = shape
    prev = prev_chunk.float().to(device)
    if prev.ndim != 3 or prev.shape[0] != batch or prev.shape[1] > horizon_len or prev.shape[2] != action_dim:
        raise ValueError(f"prev_chunk must be [{batch}, <= {horizon_len}, {action_dim}], got {list(prev.shape)}")
    length = prev.shape[1]
    prev = torch.nn.functional.pad(prev, (0, 0, 0, horizon_len - length))
    delay = _per_sample(inference_delay, batch, device)
    if bool((delay < 0).any()) or bool((delay > length).any()):
        raise ValueError(f"inference_delay must be in [0, {length}] (the previous chunk's length): {delay.tolist()}")
    default_horizon = config.execution_horizon or length
    horizon = _per_sample(default_horizon if execution_horizon is None else execution_horizon, batch, device)
    horizon = torch.maximum(horizon.clamp(max=length), delay)
    modes = _modes(rtc_mode, batch, "trained" if config.training_max_delay > 0 else "guided")
    if "trained" in modes and "trained" not in config.modes:
        raise ValueError("rtc_mode 'trained' needs a model trained with rtc.training_max_delay > 0; use 'guided'")
    return RTCRequest(prev, delay, horizon, torch.tensor([m == "trained" for m in modes], device=device))


def prefix_weights(delay: torch.Tensor, horizon: torch.Tensor, length: int, schedule: str) -> torch.Tensor:
    """``[B, length]`` weights of the previous chunk's actions: 1 before ``delay [B]``, decaying by ``schedule`` from
    ``delay`` to ``horizon [B]``, 0 from ``horizon`` on."""
    index = torch.arange(length, device=delay.device)[None].float()  # [1, H]
    d, s = delay[:, None].float(), horizon[:, None].float()  # [B, 1]
    decay = ((s - index) / (s - d + 1)).clamp(0.0, 1.0)  # [B, H] linear from d (just below 1) to s (0)
    if schedule == "exp":
        decay = decay * torch.expm1(decay) / math.expm1(1.0)
    elif schedule == "ones":
        decay = torch.ones_like(decay)
    elif schedule == "zeros":
        decay = torch.zeros_like(decay)
    elif schedule != "linear":
        raise ValueError(f"Unknown prefix_attention_schedule {schedule!r}")
    weights = torch.where(index < s, decay, torch.zeros_like(decay))
    return torch.where(index < d, torch.ones_like(decay), weights)


def guidance_weight(time: float, max_weight: float) -> float:
    """The weight of the guidance term at ``time`` (1: noise), clipped at ``max_weight``: ``(1-τ) / (τ r²)`` with
    ``τ = 1 - time`` and ``r² = (1-τ)² / (τ² + (1-τ)²)``, i.e. ``(t² + (1-t)²) / (t (1-t))``."""
    if time <= 0.0 or time >= 1.0:
        return max_weight
    return min(max_weight, (time**2 + (1.0 - time) ** 2) / (time * (1.0 - time)))


def committed_mask(delay: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, length]`` bool: the committed prefix (actions before ``delay [B]``)."""
    return torch.arange(length, device=delay.device)[None] < delay[:, None]


def sample_training_delay(
    batch: int, max_delay: int, device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[batch]`` long delays ``d ~ U{0..max_delay}`` (training-time RTC)."""
    draw_device = generator.device if generator is not None else device
    return torch.randint(0, max_delay + 1, (batch,), generator=generator, device=draw_device).to(device)


def masked_loss_mean(loss: torch.Tensor, delay: torch.Tensor | None) -> torch.Tensor:
    """The mean of the per-element loss ``[B, H, A]`` over the actions outside the committed prefix."""
    if delay is None:
        return loss.mean()
    keep = (~committed_mask(delay, loss.shape[1])).to(loss.dtype)[..., None].expand_as(loss)  # [B, H, A]
    return (loss * keep).sum() / keep.sum().clamp(min=1.0)


def _per_sample(value: int | Sequence[int] | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.long, device=device)
    if tensor.ndim == 0:
        return tensor.expand(batch).clone()
    if tensor.shape != (batch,):
        raise ValueError(f"Per-sample RTC values need one per sample ({batch}), got shape {list(tensor.shape)}")
    return tensor


def _modes(rtc_mode: str | Sequence[str] | None, batch: int, default: str) -> list[str]:
    modes = [rtc_mode or default] * batch if rtc_mode is None or isinstance(rtc_mode, str) else list(rtc_mode)
    if len(modes) != batch or any(m not in RTC_MODES for m in modes):
        raise ValueError(f"rtc_mode must be one of {RTC_MODES} (or one per sample of {batch}), got {rtc_mode!r}")
    return modes
