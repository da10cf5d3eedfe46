"""SigLIP vision tower in JAX, over the published ``PaliGemma/img`` parameter tree (layers stacked on axis 0).

Pre-LayerNorm ViT: a 14×14 patch convolution plus learned position embeddings, ``depth`` encoder blocks (attention
and a GELU MLP, each with a residual), a final LayerNorm, and ``head``: the projection to the language model's width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, Any]

LAYER_NORM_EPS = 1e-6


def layer_norm(x: jax.Array, p: Params) -> jax.Array:
    """LayerNorm over the last axis with ``scale`` and ``bias``, computed in float32."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
    return (normed * p["scale"] + p["bias"]).astype(x.dtype)


def dense(x: jax.Array, p: Params) -> jax.Array:
    """``x @ kernel + bias`` in ``x``'s dtype."""
    return x @ p["kernel"].astype(x.dtype) + p["bias"].astype(x.dtype)


def _attention(x: jax.Array, p: Params) -> jax.Array:
    """Multi-head self-attention of ``x [B, L, W]`` (no mask: every patch is valid)."""
    q, k, v = (
        jnp.einsum("blw,wnh->blnh", x, p[name]["kernel"].astype(x.dtype)) + p[name]["bias"].astype(x.dtype)
        for name in ("query", "key", "value")
    )  # [B, L, heads, head_dim]
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # [B, heads, L, head_dim]
    logits = jnp.matmul(q, k.swapaxes(-1, -2)).astype(jnp.float32) * q.shape[-1] ** -0.5
    weights = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    out = jnp.matmul(weights, v).transpose(0, 2, 1, 3)  # [B, L, heads, head_dim]
    return jnp.einsum("bqnh,nhw->bqw", out, p["out"]["kernel"].astype(x.dtype)) + p["out"]["bias"].astype(x.dtype)


def _encoder_block(x: jax.Array, p: Params) -> jax.Array:
    x = x + _attention(layer_norm(x, p["LayerNorm_0"]), p["MultiHeadDotProductAttention_0"])
    mlp = p["MlpBlock_0"]
    hidden = jax.nn.gelu(dense(layer_norm(x, p["LayerNorm_1"]), mlp["Dense_0"]), approximate=True)
    return x + dense(hidden, mlp["Dense_1"])


def encode_images(p: Params, images: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Images ``[B, H, W, 3]`` in [-1, 1] → image tokens ``[B, patches, llm_width]`` (projected by ``head``)."""
    kernel = p["embedding"]["kernel"]  # [patch, patch, 3, width] (HWIO)
    patch, width = kernel.shape[0], kernel.shape[-1]
    batch, height, image_width, channels = images.shape
    rows, cols = height // patch, image_width // patch
    # The stride-patch convolution as one matmul over flattened patches (same (row, col, channel) order as HWIO).
    patches = images.astype(jnp.float32).reshape(batch, rows, patch, cols, patch, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows * cols, patch * patch * channels)
    x = patches @ kernel.reshape(-1, width) + p["embedding"]["bias"]  # [B, patches, width]
    x = (x + p["pos_embedding"]).astype(dtype)
    x, _ = jax.lax.scan(lambda h, layer: (_encoder_block(h, layer), None), x, p["Transformer"]["encoderblock"])
    x = layer_norm(x, p["Transformer"]["encoder_norm"])
    return dense(x, p["head"])
