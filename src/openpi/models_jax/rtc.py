"""Real-time chunking in JAX, with static shapes: the previous chunk's prefix weights, the guidance weight, the
committed prefix of training-time RTC (the conventions of :mod:`openpi.models_pytorch.rtc`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def prefix_weights(delay: jax.Array, horizon: jax.Array, length: int, schedule: str) -> jax.Array:
    """``[B, length]`` weights: 1 before ``delay [B]``, decaying by ``schedule`` until ``horizon [B]``, then 0."""
    index = jnp.arange(length, dtype=jnp.float32)[None]  # [1, H]
    d, s = delay[:, None].astype(jnp.float32), horizon[:, None].astype(jnp.float32)  # [B, 1]
    decay = jnp.clip((s - index) / (s - d + 1.0), 0.0, 1.0)  # [B, H]
    if schedule == "exp":
        decay = decay * jnp.expm1(decay) / math.expm1(1.0)
    elif schedule == "ones":
        decay = jnp.ones_like(decay)
    elif schedule == "zeros":
        decay = jnp.zeros_like(decay)
    elif schedule != "linear":
        raise ValueError(f"Unknown prefix_attention_schedule {schedule!r}")
    return jnp.where(index < d, 1.0, jnp.where(index < s, decay, 0.0))


def guidance_weight(time: jax.Array, max_weight: float) -> jax.Array:
    """``min(max_weight, (t² + (1-t)²) / (t (1-t)))``, ``max_weight`` at t = 0 or 1."""
    inside = (time > 0.0) & (time < 1.0)
    safe = jnp.where(inside, time, 0.5)
    weight = (safe**2 + (1.0 - safe) ** 2) / (safe * (1.0 - safe))
    return jnp.where(inside, jnp.minimum(max_weight, weight), max_weight)


def committed_mask(delay: jax.Array, length: int) -> jax.Array:
    """``[B, length]`` bool: the actions before ``delay [B]``."""
    return jnp.arange(length)[None] < delay[:, None]


def masked_loss_mean(loss: jax.Array, delay: jax.Array | None) -> jax.Array:
    """The mean of the per-element loss ``[B, H, A]`` outside the committed prefix."""
    if delay is None:
        return loss.mean()
    keep = jnp.broadcast_to((~committed_mask(delay, loss.shape[1]))[..., None], loss.shape).astype(loss.dtype)
    return (loss * keep).sum() / jnp.maximum(keep.sum(), 1.0)


def sample_loss_means(loss: jax.Array, delay: jax.Array | None) -> jax.Array:
    """``[B]``: each sample's mean per-element loss ``[B, H, A]`` outside its committed prefix."""
    if delay is None:
        return loss.mean(axis=(1, 2))
    keep = jnp.broadcast_to((~committed_mask(delay, loss.shape[1]))[..., None], loss.shape).astype(loss.dtype)
    return (loss * keep).sum(axis=(1, 2)) / jnp.maximum(keep.sum(axis=(1, 2)), 1.0)
