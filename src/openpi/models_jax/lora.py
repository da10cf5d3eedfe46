"""Folding LoRA adapters into their base weights: the tree of the same model without adapters.

The adapted einsums compute ``x·W + scale · (x·A)·B`` with upstream's equations (see ``gemma._einsum``), so the merged
weight is ``W + scale · A·B`` contracted over the rank — except the attention output, whose adapter sums ``B`` over
the heads (its intermediate has no head axis), so every head's slice of ``W`` gains ``A_head · Σ_heads B``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from openpi.models.orbax_params import flatten_params
from openpi.models.pi0_config import Pi0Config
from openpi.models_jax import params as jax_params
from openpi.models_jax.pi0 import lora_scales

Params = dict[str, Any]


def merge_lora(params: Params, config: Pi0Config) -> Params:
    """``params`` of a LoRA variant with every adapter folded in and dropped (loadable by the base variant)."""
    flat = dict(flatten_params(params))
    scales = dict(zip(("", "_1"), lora_scales(config), strict=True))
    for path in list(flat):
        if not path.endswith("lora_a"):
            continue
        b_path = path[: -len("lora_a")] + "lora_b"
        a, b = flat.pop(path), flat.pop(b_path)
        node = path.split("/")[-2] if path.endswith("/lora_a") else path.split("/")[-1][: -len("_lora_a")]
        scale = scales["_1" if node.endswith("_1") or "/mlp_1/" in path else ""]
        if node.startswith("attn_vec_einsum"):
            b = b.sum(axis=-3, keepdims=True)  # [L, 1, rank, width]: the adapter sums its B over the heads
        weight_path = path[: -len("/lora_a")] + "/w" if path.endswith("/lora_a") else path[: -len("_lora_a")]
        delta = jnp.einsum("...ir,...ro->...io", a, b)
        flat[weight_path] = flat[weight_path] + scale * delta
    return jax_params.nest(flat)
