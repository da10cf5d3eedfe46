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

from openpi.models.pi0_config import RTCConfig
from openpi.models.rtc import resolve


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

    ``prev_chunk [B, L, A]`` (L <= H) is padded with zeros to H; the per-sample settings are
    :func:`openpi.models.rtc.resolve`'s.
    """
    if prev_chunk is None:
        return None
    settings = resolve(config, tuple(prev_chunk.shape), shape, inference_delay, execution_horizon, rtc_mode)
    prev = torch.nn.functional.pad(prev_chunk.float().to(device), (0, 0, 0, shape[1] - prev_chunk.shape[1]))
    delay, horizon, trained = (torch.as_tensor(x, device=device) for x in settings)
    return RTCRequest(prev, delay, horizon, trained)


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


def sample_loss_means(loss: torch.Tensor, delay: torch.Tensor | None) -> torch.Tensor:
    """``[B]``: each sample's mean per-element loss ``[B, H, A]`` outside its committed prefix (without a delay, any
    per-sample loss ``[B, ...]``)."""
    if delay is None:
        return loss.reshape(loss.shape[0], -1).mean(dim=1)
    keep = (~committed_mask(delay, loss.shape[1])).to(loss.dtype)[..., None].expand_as(loss)  # [B, H, A]
    return (loss * keep).sum(dim=(1, 2)) / keep.sum(dim=(1, 2)).clamp(min=1.0)
