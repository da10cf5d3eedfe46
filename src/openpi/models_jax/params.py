"""The JAX model's parameter tree: the published orbax ``params`` layout, initialised or restored strictly.

The layout (every path and shape for a :class:`Pi0Config`) is the one the JAX → PyTorch converter checks checkpoints
against (``convert_rules.expected_jax_shapes``): one description of the published tree for both frameworks. LoRA
variants add upstream's adapter leaves (:func:`lora_shapes`): ``lora_a`` / ``lora_b`` inside each attention einsum
(the weight's last axis, then its second-to-last, replaced by the rank) and ``gating_einsum_lora_a`` / ``_b``,
``linear_lora_a`` / ``_b`` beside the MLP weights.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from openpi.models import variants
from openpi.models.pi0_config import Pi0Config
from openpi.models.variants import GemmaConfig
from openpi.models_pytorch import orbax_params
from openpi.models_pytorch.convert_rules import CheckpointMismatchError, Shape, check_params, expected_jax_shapes

Params = dict[str, Any]
logger = logging.getLogger(__name__)


def nest(flat: Mapping[str, Any]) -> Params:
    """``{"a/b": x}`` → ``{"a": {"b": x}}``."""
    tree: Params = {}
    for path, leaf in flat.items():
        *parents, name = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[name] = leaf
    return tree


LORA_INIT_STD = 0.01


def lora_shapes(config: Pi0Config) -> dict[str, Shape]:
    """The adapter leaves of the LoRA variants among the language model (no suffix) and the expert (``_1``)."""
    shapes: dict[str, Shape] = {}
    for suffix, gemma in (("", config.llm_config), ("_1", config.expert_config)):
        rank = gemma.lora_rank
        if not rank:
            continue
        depth, heads, kv, width, dim, mlp = (
            gemma.depth, gemma.num_heads, gemma.num_kv_heads, gemma.width, gemma.head_dim, gemma.mlp_dim
        )  # fmt: skip
        attn, ffn = "PaliGemma/llm/layers/attn", f"PaliGemma/llm/layers/mlp{suffix}"
        shapes |= {
            f"{attn}/q_einsum{suffix}/lora_a": (depth, heads, width, rank),
            f"{attn}/q_einsum{suffix}/lora_b": (depth, heads, rank, dim),
            f"{attn}/kv_einsum{suffix}/lora_a": (depth, 2, kv, width, rank),
            f"{attn}/kv_einsum{suffix}/lora_b": (depth, 2, kv, rank, dim),
            f"{attn}/attn_vec_einsum{suffix}/lora_a": (depth, heads, dim, rank),
            f"{attn}/attn_vec_einsum{suffix}/lora_b": (depth, heads, rank, width),
            f"{ffn}/gating_einsum_lora_a": (depth, 2, width, rank),
            f"{ffn}/gating_einsum_lora_b": (depth, 2, rank, mlp),
            f"{ffn}/linear_lora_a": (depth, mlp, rank),
            f"{ffn}/linear_lora_b": (depth, rank, width),
        }
    return shapes


def layout(config: Pi0Config) -> dict[str, Shape]:
    """Every path and shape of the model's tree: the published layout, plus the adapters of LoRA variants."""
    return expected_jax_shapes(config) | lora_shapes(config)


def base_variant(config: Pi0Config) -> Pi0Config:
    """``config`` with its Gemma variants stripped of their adapters (what a merged or base checkpoint holds)."""

    def strip(variant: GemmaConfig) -> str:
        return variants.spell_variant(dataclasses.replace(variant, lora_rank=0, lora_alpha=0, lora_rslora=0))

    return dataclasses.replace(
        config, paligemma_variant=strip(config.llm_config), action_expert_variant=strip(config.expert_config)
    )


def _fan_in(path: str, shape: Shape) -> int:
    """The contracted size of a kernel (the input features of one output)."""
    name = path.split("/")[-2]
    if name in ("attn_vec_einsum", "attn_vec_einsum_1", "out"):
        return shape[-3] * shape[-2]  # [heads, head_dim, width]
    if name in ("query", "key", "value"):
        return shape[-3]  # [width, heads, head_dim]
    if path.endswith("embedding/kernel"):
        return math.prod(shape[-4:-1])  # HWIO patch kernel
    return shape[-2]


def _init_leaf(path: str, shape: Shape, key: jax.Array) -> jax.Array:
    """Unit LayerNorm scales; zero Gemma norm offsets (``1 + scale``), adaRMS layers and biases; normal embeddings
    and kernels (std 1/sqrt(fan-in))."""
    if "lora_" in path:
        return jax.random.normal(key, shape, jnp.float32) * LORA_INIT_STD
    if path.endswith("/scale"):
        return jnp.ones(shape) if "/img/" in path else jnp.zeros(shape)
    if path.endswith("/bias") or "_norm" in path:
        return jnp.zeros(shape)
    std = shape[-1] ** -0.5 if path.endswith(("pos_embedding", "input_embedding")) else _fan_in(path, shape) ** -0.5
    return jax.random.normal(key, shape, jnp.float32) * std


def init_params(config: Pi0Config, seed: int = 0) -> Params:
    """Freshly initialised float32 parameters in the published layout (with the adapters of LoRA variants)."""
    return nest(_init_leaves(layout(config), seed))


def _init_leaves(shapes: dict[str, Shape], seed: int) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {path: _init_leaf(path, shape, key) for (path, shape), key in zip(shapes.items(), keys, strict=True)}


def load_params(checkpoint_dir: str | os.PathLike, config: Pi0Config, seed: int = 0) -> Params:
    """Restores ``<checkpoint>/params`` (an orbax tree, ``value``-wrapped or not) as float32 numpy arrays.

    Strict: unknown, missing and misshapen paths raise one ``CheckpointMismatchError`` listing them all. A LoRA
    variant accepts a tree with all of its adapters or none (a base checkpoint: the adapters are initialised).
    """
    params_dir = orbax_params.resolve_params_dir(checkpoint_dir)
    shapes = {path: info.shape for path, info in orbax_params.read_param_metadata(params_dir).items()}
    adapters = lora_shapes(config)
    stored_adapters = {path: shape for path, shape in shapes.items() if path in adapters}
    check_params({path: shape for path, shape in shapes.items() if path not in adapters}, base_variant(config))
    if stored_adapters and stored_adapters != adapters:
        missing = sorted(set(adapters) - set(stored_adapters))
        wrong = sorted(p for p in stored_adapters if stored_adapters[p] != adapters[p])
        raise CheckpointMismatchError(
            f"The checkpoint's LoRA adapters are incomplete: missing {missing}, misshapen {wrong}"
        )
    flat = orbax_params.flatten_params(orbax_params.load_jax_params(params_dir))
    flat = {path: np.asarray(leaf, dtype=np.float32) for path, leaf in flat.items()}
    if adapters and not stored_adapters:
        logger.info("The checkpoint has no LoRA adapters: initialising the %d adapter leaves", len(adapters))
        flat |= {path: np.asarray(leaf) for path, leaf in _init_leaves(adapters, seed).items()}
    return nest(flat)
