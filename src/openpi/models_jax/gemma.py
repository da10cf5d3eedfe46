"""The language model and the action expert in JAX: one Gemma stack with two weight sets and shared attention.

Parameters are the published ``PaliGemma/llm`` tree: layers stacked on axis 0, the expert's weights carrying the
suffix ``_1`` (``q_einsum_1``, ``mlp_1``, ``pre_attention_norm_1``, ``final_norm_1``). Stream 0 (the prefix) uses the
language model's weights, stream 1 (the suffix) the expert's; every layer attends jointly over both streams, and
keys/values of an earlier call (the prefix cache) can be prepended.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, Any]

RMS_EPS = 1e-6
ROPE_BASE = 10_000.0
# Additive bias of a masked attention logit: finite, so that a fully masked (padding) row stays a uniform softmax.
MASKED_LOGIT = -2.3819763e38
STREAM_SUFFIXES = ("", "_1")


class KVCache(NamedTuple):
    """Keys and values of every layer after rotary embedding, ``[layers, B, L, kv_heads, head_dim]`` each."""

    keys: jax.Array
    values: jax.Array


def embed_tokens(p: Params, tokens: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Token ids ``[B, T]`` → embeddings ``[B, T, width]`` scaled by sqrt(width)."""
    table = p["embedder"]["input_embedding"]
    return (table[tokens] * jnp.sqrt(float(table.shape[1]))).astype(dtype)


def rms_norm(x: jax.Array, p: Params, cond: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    """Gemma RMS norm in float32: ``normed * (1 + scale)``; or adaptive (``Dense_0`` maps ``cond [B, C]``, or per
    token ``[B, T, C]``, to scale,
    shift and gate): ``normed * (1 + scale) + shift``, returning ``gate`` for the residual that follows."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + RMS_EPS)
    if "scale" in p:
        return (normed * (1.0 + p["scale"])).astype(x.dtype), None
    if cond is None:
        raise ValueError("An adaptive RMS norm needs the conditioning vector (the π0.5 time embedding)")
    dense = p["Dense_0"]
    modulation = cond.astype(jnp.float32) @ dense["kernel"] + dense["bias"]  # [B, 3W] or [B, T, 3W]
    if modulation.ndim == 2:
        modulation = modulation[:, None]
    scale, shift, gate = jnp.split(modulation, 3, axis=-1)
    return (normed * (1.0 + scale) + shift).astype(x.dtype), gate.astype(x.dtype)


def _gated_residual(x: jax.Array, y: jax.Array, gate: jax.Array | None) -> jax.Array:
    return x + y if gate is None else x + gate * y


def rotary_angles(positions: jax.Array, head_dim: int) -> jax.Array:
    """Angles ``[B, L, head_dim / 2]``: ``positions [B, L]`` divided (IEEE float32, as upstream) by the timescales.

    XLA rewrites ``x / broadcast(t)`` into ``x * broadcast(1 / t)``, up to an ulp off; an ulp of the angle at
    position 500 is 3e-5 rad, enough to move the logits by 1e-4. The barrier hides the broadcast from that rewrite.
    """
    half = head_dim // 2
    timescale = ROPE_BASE ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)  # [half]
    timescale = jax.lax.optimization_barrier(jnp.broadcast_to(timescale, (*positions.shape, half)))
    return positions.astype(jnp.float32)[..., None] / timescale


def apply_rotary(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotates the two halves of the head dimension of ``x [B, L, heads, head_dim]`` by ``positions [B, L]``."""
    angles = rotary_angles(positions, x.shape[-1])[..., None, :]  # [B, L, 1, half]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _einsum(equation: str, x: jax.Array, p: Params, lora_scale: float) -> jax.Array:
    """``x`` through the einsum weight ``p["w"]``, plus ``lora_scale ·`` its low-rank adapter when ``p`` has one:
    ``lora_a`` replaces the weight's last axis by the rank, ``lora_b`` its second-to-last (upstream's equations)."""
    out = jnp.einsum(equation, x, p["w"].astype(x.dtype))
    if "lora_a" not in p:
        return out
    inputs, rest = equation.split(",")
    weight, result = rest.split("->")
    first, last = weight[-2], weight[-1]
    equation_a = f"{inputs},{weight.replace(last, 'r')}->{result.replace(last, 'r')}"
    equation_b = f"{result.replace(last, 'r')},{weight.replace(first, 'r')}->{result}"
    low_rank = jnp.einsum(equation_a, x, p["lora_a"].astype(x.dtype))
    return out + lora_scale * jnp.einsum(equation_b, low_rank, p["lora_b"].astype(x.dtype))


def _dot(x: jax.Array, w: jax.Array, lora: tuple[jax.Array, jax.Array] | None, lora_scale: float) -> jax.Array:
    out = x @ w.astype(x.dtype)
    if lora is None:
        return out
    return out + lora_scale * ((x @ lora[0].astype(x.dtype)) @ lora[1].astype(x.dtype))


def _mlp(x: jax.Array, p: Params, lora_scale: float) -> jax.Array:
    gating = p["gating_einsum"]  # [2 (gate, up), width, mlp_dim]
    adapted = "gating_einsum_lora_a" in p

    def lora(name: str, index: int | None) -> tuple[jax.Array, jax.Array] | None:
        if not adapted:
            return None
        a, b = p[f"{name}_lora_a"], p[f"{name}_lora_b"]
        return (a, b) if index is None else (a[index], b[index])

    gate = _dot(x, gating[0], lora("gating_einsum", 0), lora_scale)
    up = _dot(x, gating[1], lora("gating_einsum", 1), lora_scale)
    return _dot(jax.nn.gelu(gate, approximate=True) * up, p["linear"], lora("linear", None), lora_scale)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """Grouped-query attention of ``q [B, Lq, H, D]`` over ``k, v [B, Lk, K, D]`` with logit ``bias [B, Lq, Lk]``;
    returns ``[B, Lq, H, D]``. Query head h reads key/value head h // (H / K)."""
    groups = q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(t, groups, axis=2).transpose(0, 2, 1, 3) for t in (k, v))  # [B, H, Lk, D]
    # Plain batched matmuls: XLA's CPU backend runs them several times faster than a grouped einsum.
    logits = jnp.matmul(q.transpose(0, 2, 1, 3), k.swapaxes(-1, -2)).astype(jnp.float32) * q.shape[-1] ** -0.5
    weights = jax.nn.softmax(logits + bias[:, None], axis=-1).astype(v.dtype)  # [B, H, Lq, Lk]
    return jnp.matmul(weights, v).transpose(0, 2, 1, 3)


def _layer(
    p: Params,
    streams: list[jax.Array | None],
    conds: list[jax.Array | None],
    positions: jax.Array,
    bias: jax.Array,
    past: tuple[jax.Array, jax.Array] | None,
    lora_scales: tuple[float, float],
) -> tuple[list[jax.Array | None], tuple[jax.Array, jax.Array]]:
    """One layer: per-stream norms and projections, one shared attention, per-stream MLPs."""
    attn = p["attn"]
    queries, keys, values, gates = [], [], [], []
    for suffix, x, cond, scale in zip(STREAM_SUFFIXES, streams, conds, lora_scales, strict=True):
        if x is None:
            gates.append(None)
            continue
        normed, gate = rms_norm(x, p[f"pre_attention_norm{suffix}"], cond)
        queries.append(_einsum("btw,nwd->btnd", normed, attn[f"q_einsum{suffix}"], scale))
        kv = _einsum("btw,ckwd->cbtkd", normed, attn[f"kv_einsum{suffix}"], scale)
        keys.append(kv[0])
        values.append(kv[1])
        gates.append(gate)
    q = apply_rotary(jnp.concatenate(queries, axis=1), positions)  # [B, Lq, H, D]
    k = apply_rotary(jnp.concatenate(keys, axis=1), positions)  # [B, Lq, K, D]
    v = jnp.concatenate(values, axis=1)
    if past is not None:  # the cached prefix comes first: Lk = L_cache + Lq
        k, v = jnp.concatenate([past[0], k], axis=1), jnp.concatenate([past[1], v], axis=1)
    out = _attend(q, k, v, bias)  # [B, Lq, H, D]

    outputs: list[jax.Array | None] = []
    start = 0
    for suffix, x, cond, gate, scale in zip(STREAM_SUFFIXES, streams, conds, gates, lora_scales, strict=True):
        if x is None:
            outputs.append(None)
            continue
        stream_out = out[:, start : start + x.shape[1]]
        start += x.shape[1]
        x = _gated_residual(x, _einsum("btnd,ndw->btw", stream_out, attn[f"attn_vec_einsum{suffix}"], scale), gate)
        normed, gate_ffw = rms_norm(x, p[f"pre_ffw_norm{suffix}"], cond)
        outputs.append(_gated_residual(x, _mlp(normed, p[f"mlp{suffix}"], scale), gate_ffw))
    return outputs, (k, v)


def transformer(
    p: Params,
    streams: list[jax.Array | None],
    attention_mask: jax.Array,
    positions: jax.Array,
    conds: list[jax.Array | None],
    cache: KVCache | None = None,
    key_bias: jax.Array | None = None,
    remat: bool = False,
    lora_scales: tuple[float, float] = (1.0, 1.0),
) -> tuple[list[jax.Array | None], KVCache]:
    """Runs every layer over ``[prefix [B, Lp, W_llm] | None, suffix [B, Ls, W_expert] | None]``.

    ``attention_mask`` bool ``[B, Lq, Lk]`` (Lk = cached length + Lq); ``positions [B, Lq]`` the queried tokens'
    rotary positions; ``conds`` the per-stream adaRMS conditioning; ``key_bias [B, Lk]`` is added to every logit
    into each key (None: nothing). Returns each given stream after the final norm, and the keys/values of this call
    (the cache's included). ``remat`` recomputes each layer's activations in the backward pass. ``lora_scales``
    scale each stream's adapters (used only where the tree has them).
    """
    bias = jnp.zeros(attention_mask.shape, jnp.float32) if key_bias is None else key_bias[:, None, :]
    bias = jnp.where(attention_mask, bias, MASKED_LOGIT)  # [B, Lq, Lk]

    def body(carry, layer_and_past):
        layer, past = layer_and_past
        return _layer(layer, carry, conds, positions, bias, past, lora_scales)

    if remat:
        body = jax.checkpoint(body)
    streams, (keys, values) = jax.lax.scan(body, streams, (p["layers"], cache))
    outputs = [
        None if x is None else rms_norm(x, p[f"final_norm{suffix}"], cond)[0]
        for suffix, x, cond in zip(STREAM_SUFFIXES, streams, conds, strict=True)
    ]
    return outputs, KVCache(keys, values)
