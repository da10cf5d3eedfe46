"""The JAX model's parameter tree: the published orbax ``params`` layout, initialised or restored strictly.

The layout (every path and shape for a :class:`Pi0Config`) is the one the JAX → PyTorch converter checks checkpoints
against (``convert_rules.expected_jax_shapes``): one description of the published tree for both frameworks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from openpi.models.pi0_config import Pi0Config
from openpi.models_pytorch import orbax_params
from openpi.models_pytorch.convert_rules import Shape, check_params, expected_jax_shapes

Params = dict[str, Any]


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
    if path.endswith("/scale"):
        return jnp.ones(shape) if "/img/" in path else jnp.zeros(shape)
    if path.endswith("/bias") or "_norm" in path:
        return jnp.zeros(shape)
    std = shape[-1] ** -0.5 if path.endswith(("pos_embedding", "input_embedding")) else _fan_in(path, shape) ** -0.5
    return jax.random.normal(key, shape, jnp.float32) * std


def init_params(config: Pi0Config, seed: int = 0) -> Params:
    """Freshly initialised float32 parameters in the published layout."""
    shapes = expected_jax_shapes(config)
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return nest({path: _init_leaf(path, shape, key) for (path, shape), key in zip(shapes.items(), keys, strict=True)})


def load_params(checkpoint_dir: str | os.PathLike, config: Pi0Config) -> Params:
    """Restores ``<checkpoint>/params`` (an orbax tree, ``value``-wrapped or not) as float32 numpy arrays.

    Strict: unknown, missing and misshapen paths raise one ``CheckpointMismatchError`` listing them all.
    """
    params_dir = orbax_params.resolve_params_dir(checkpoint_dir)
    check_params({path: info.shape for path, info in orbax_params.read_param_metadata(params_dir).items()}, config)
    flat = orbax_params.flatten_params(orbax_params.load_jax_params(params_dir))
    return nest({path: np.asarray(leaf, dtype=np.float32) for path, leaf in flat.items()})
