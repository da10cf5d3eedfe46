"""The JAX model's parameter tree: the published orbax ``params`` layout, initialised or restored strictly.

The layout (every path and shape for a :class:`Pi0Config`, and the adapters of LoRA variants) is
:mod:`openpi.models.param_layout`'s, the description of the published tree that the JAX → PyTorch converter checks
checkpoints against too.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from openpi.models import orbax_params
from openpi.models.param_layout import (
    CheckpointMismatchError,
    Shape,
    base_variant,
    check_model_params,
    lora_shapes,
    model_shapes,
)
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig

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


def layout(config: Pi0Config | Pi0FastConfig) -> dict[str, Shape]:
    """Every path and shape of the model's tree: the published layout, plus the adapters of LoRA variants."""
    return model_shapes(config) | lora_shapes(config)


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


def init_params(config: Pi0Config | Pi0FastConfig, seed: int = 0) -> Params:
    """Freshly initialised float32 parameters in the published layout (with the adapters of LoRA variants)."""
    return nest(_init_leaves(layout(config), seed))


def _init_leaves(shapes: dict[str, Shape], seed: int) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {path: _init_leaf(path, shape, key) for (path, shape), key in zip(shapes.items(), keys, strict=True)}


def load_params(checkpoint_dir: str | os.PathLike, config: Pi0Config | Pi0FastConfig, seed: int = 0) -> Params:
    """Restores ``<checkpoint>/params`` (an orbax tree, ``value``-wrapped or not) as float32 numpy arrays.

    Strict: unknown, missing and misshapen paths raise one ``CheckpointMismatchError`` listing them all. A LoRA
    variant accepts a tree with all of its adapters or none (a base checkpoint: the adapters are initialised).
    """
    params_dir = orbax_params.resolve_params_dir(checkpoint_dir)
    shapes = {path: info.shape for path, info in orbax_params.read_param_metadata(params_dir).items()}
    adapters = lora_shapes(config)
    stored_adapters = {path: shape for path, shape in shapes.items() if path in adapters}
    check_model_params({p: shape for p, shape in shapes.items() if p not in adapters}, base_variant(config))
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
