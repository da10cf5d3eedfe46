"""Conversion rules from the published π0 / π0.5 parameter tree to the PyTorch state-dict layout.

The tree itself (every leaf's path and shape) is :mod:`openpi.models.param_layout`'s; a :class:`ParamRule` adds, per
leaf, the PyTorch tensors it becomes, with their shapes and how to extract them from the leaf.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import ml_dtypes
import numpy as np

from openpi.models import variants
from openpi.models.param_layout import (
    ENCODER,
    EXPERT_SUFFIX,
    IMG,
    LLM,
    LLM_LAYERS,
    CheckpointMismatchError,
    Shape,
    check_fast_params,
    check_float_leaf,
    check_params,
    paligemma_shapes,
    published_shapes,
)
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models_pytorch.weights import keeps_float32

Precision = Literal["bfloat16", "float32"]
Transform = Callable[[np.ndarray], np.ndarray]

_PALIGEMMA = "paligemma_with_expert.paligemma.model"
# π0-FAST's PaliGemma module in PyTorch (no action expert around it).
FAST_PALIGEMMA = "paligemma.model"
_EXPERT = "paligemma_with_expert.gemma_expert.model"

NUMPY_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@dataclasses.dataclass(frozen=True)
class TensorTarget:
    """One PyTorch tensor produced from a published leaf."""

    key: str
    shape: Shape
    extract: Transform

    @property
    def keep_float32(self) -> bool:
        """Stays float32 in a bfloat16 export: the model's own list, ``weights.FLOAT32_PARAMETERS``."""
        return keeps_float32(self.key)


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """A published leaf (path joined with ``/``), its shape and the PyTorch tensors it becomes."""

    source: str
    shape: Shape
    targets: tuple[TensorTarget, ...]


# ---------------------------------------------------------------------------------------------------------------------
# Tensor transforms (applied to one layer's slice of a stacked leaf).


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _dense_kernel(kernel: np.ndarray) -> np.ndarray:
    """Dense ``[in, out]`` -> torch Linear ``[out, in]``."""
    return kernel.T


def _flatten(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def _einsum_heads_in(w: np.ndarray) -> np.ndarray:
    """Gemma ``[heads, width, head_dim]`` -> ``[heads*head_dim, width]`` (row ``h*head_dim + d``)."""
    return w.transpose(0, 2, 1).reshape(-1, w.shape[1])


def _heads_out(w: np.ndarray) -> np.ndarray:
    """``[heads, head_dim, width]`` -> ``[width, heads*head_dim]`` (column ``h*head_dim + d``)."""
    return w.reshape(-1, w.shape[-1]).T


def _siglip_heads_in(w: np.ndarray) -> np.ndarray:
    """SigLIP ``[width, heads, head_dim]`` -> ``[heads*head_dim, width]``."""
    return w.reshape(w.shape[0], -1).T


def _patch_kernel(kernel: np.ndarray) -> np.ndarray:
    """Conv kernel HWIO -> OIHW."""
    return kernel.transpose(3, 2, 0, 1)


def _drop_leading_axis(a: np.ndarray) -> np.ndarray:
    return a[0]


def _take(index: int, transform: Transform, a: np.ndarray) -> np.ndarray:
    return transform(a[index])


# ---------------------------------------------------------------------------------------------------------------------
# Targets: published leaf -> the PyTorch tensors it becomes.

Targets = dict[str, tuple[TensorTarget, ...]]


def _single(source: str, key: str, out_shape: Shape, transform: Transform = _identity) -> Targets:
    return {source: (TensorTarget(key, out_shape, transform),)}


def _stacked(source: str, depth: int, outputs: Sequence[tuple[str, Shape, Transform]]) -> Targets:
    """A leaf stacked over ``depth`` layers; ``outputs`` are ``(key template with {i}, shape, transform)`` applied to
    each layer's slice. Targets are ordered layer by layer."""
    targets = tuple(
        TensorTarget(key.format(i=i), out_shape, functools.partial(_take, i, transform))
        for i in range(depth)
        for key, out_shape, transform in outputs
    )
    return {source: targets}


def _dense(source: str, in_dim: int, out_dim: int, key: str, depth: int | None = None) -> Targets:
    """A dense layer's kernel and bias, stacked over ``depth`` layers unless None."""
    kernel, bias = (f"{key}.weight", (out_dim, in_dim), _dense_kernel), (f"{key}.bias", (out_dim,), _identity)
    if depth is None:
        return _single(f"{source}/kernel", *kernel) | _single(f"{source}/bias", *bias)
    return _stacked(f"{source}/kernel", depth, [kernel]) | _stacked(f"{source}/bias", depth, [bias])


def _vision_targets(vision: variants.SiglipConfig, llm_width: int, paligemma: str = _PALIGEMMA) -> Targets:
    w, depth, mlp, p = vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size, vision.patch_size
    vision_model = f"{paligemma}.vision_tower.vision_model"
    layer, embeddings = f"{vision_model}.encoder.layers.{{i}}", f"{vision_model}.embeddings"
    targets = _single(f"{IMG}/embedding/kernel", f"{embeddings}.patch_embedding.weight", (w, 3, p, p), _patch_kernel)
    targets |= _single(f"{IMG}/embedding/bias", f"{embeddings}.patch_embedding.bias", (w,))
    targets |= _single(
        f"{IMG}/pos_embedding", f"{embeddings}.position_embedding.weight", (vision.num_patches, w), _drop_leading_axis
    )
    for jax_name, torch_name in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
        for jax_param, torch_param in (("scale", "weight"), ("bias", "bias")):
            key = f"{layer}.{torch_name}.{torch_param}"
            targets |= _stacked(f"{ENCODER}/{jax_name}/{jax_param}", depth, [(key, (w,), _identity)])
    attention = f"{ENCODER}/MultiHeadDotProductAttention_0"
    for jax_name, torch_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        proj = f"{layer}.self_attn.{torch_name}"
        targets |= _stacked(f"{attention}/{jax_name}/kernel", depth, [(f"{proj}.weight", (w, w), _siglip_heads_in)])
        targets |= _stacked(f"{attention}/{jax_name}/bias", depth, [(f"{proj}.bias", (w,), _flatten)])
    out_proj = f"{layer}.self_attn.out_proj"
    targets |= _stacked(f"{attention}/out/kernel", depth, [(f"{out_proj}.weight", (w, w), _heads_out)])
    targets |= _stacked(f"{attention}/out/bias", depth, [(f"{out_proj}.bias", (w,), _identity)])
    targets |= _dense(f"{ENCODER}/MlpBlock_0/Dense_0", w, mlp, f"{layer}.mlp.fc1", depth)
    targets |= _dense(f"{ENCODER}/MlpBlock_0/Dense_1", mlp, w, f"{layer}.mlp.fc2", depth)
    targets |= _single(f"{IMG}/Transformer/encoder_norm/scale", f"{vision_model}.post_layernorm.weight", (w,))
    targets |= _single(f"{IMG}/Transformer/encoder_norm/bias", f"{vision_model}.post_layernorm.bias", (w,))
    return targets | _dense(f"{IMG}/head", w, llm_width, f"{paligemma}.multi_modal_projector.linear")


def _norm_targets(jax_norm: str, torch_norm: str, width: int, depth: int | None, adarms: bool) -> Targets:
    """An RMSNorm (``scale``) or, with ``adarms``, the dense layer producing (scale, shift, gate) from the time
    embedding. ``depth`` None means an unstacked (final) norm."""
    if adarms:
        return _dense(f"{jax_norm}/Dense_0", width, 3 * width, f"{torch_norm}.dense", depth)
    if depth is None:
        return _single(f"{jax_norm}/scale", f"{torch_norm}.weight", (width,))
    return _stacked(f"{jax_norm}/scale", depth, [(f"{torch_norm}.weight", (width,), _identity)])


def _gemma_targets(gemma: variants.GemmaConfig, suffix: str, prefix: str, adarms: bool) -> Targets:
    """One Gemma tower inside the shared ``PaliGemma/llm`` tree; the action expert's leaves carry ``suffix`` ``_1``."""
    w, depth, mlp = gemma.width, gemma.depth, gemma.mlp_dim
    q_dim, kv_dim = gemma.num_heads * gemma.head_dim, gemma.num_kv_heads * gemma.head_dim
    layer = f"{prefix}.layers.{{i}}"
    attn, ffn = f"{LLM_LAYERS}/attn", f"{LLM_LAYERS}/mlp{suffix}"
    q_proj = (f"{layer}.self_attn.q_proj.weight", (q_dim, w), _einsum_heads_in)
    k_proj = (f"{layer}.self_attn.k_proj.weight", (kv_dim, w), functools.partial(_take, 0, _einsum_heads_in))
    v_proj = (f"{layer}.self_attn.v_proj.weight", (kv_dim, w), functools.partial(_take, 1, _einsum_heads_in))
    o_proj = (f"{layer}.self_attn.o_proj.weight", (w, q_dim), _heads_out)
    gate_proj = (f"{layer}.mlp.gate_proj.weight", (mlp, w), functools.partial(_take, 0, _dense_kernel))
    up_proj = (f"{layer}.mlp.up_proj.weight", (mlp, w), functools.partial(_take, 1, _dense_kernel))
    down_proj = (f"{layer}.mlp.down_proj.weight", (w, mlp), _dense_kernel)
    targets = _stacked(f"{attn}/q_einsum{suffix}/w", depth, [q_proj])
    targets |= _stacked(f"{attn}/kv_einsum{suffix}/w", depth, [k_proj, v_proj])
    targets |= _stacked(f"{attn}/attn_vec_einsum{suffix}/w", depth, [o_proj])
    targets |= _stacked(f"{ffn}/gating_einsum", depth, [gate_proj, up_proj])
    targets |= _stacked(f"{ffn}/linear", depth, [down_proj])
    targets |= _norm_targets(f"{LLM_LAYERS}/pre_attention_norm{suffix}", f"{layer}.input_layernorm", w, depth, adarms)
    targets |= _norm_targets(
        f"{LLM_LAYERS}/pre_ffw_norm{suffix}", f"{layer}.post_attention_layernorm", w, depth, adarms
    )
    return targets | _norm_targets(f"{LLM}/final_norm{suffix}", f"{prefix}.norm", w, None, adarms)


def _projection_targets(config: Pi0Config) -> Targets:
    width, action_dim = config.expert_config.width, config.action_dim
    targets = _dense("action_in_proj", action_dim, width, "action_in_proj")
    targets |= _dense("action_out_proj", width, action_dim, "action_out_proj")
    if config.pi05:
        targets |= _dense("time_mlp_in", width, width, "time_mlp_in")
        return targets | _dense("time_mlp_out", width, width, "time_mlp_out")
    targets |= _dense("state_proj", action_dim, width, "state_proj")
    targets |= _dense("action_time_mlp_in", 2 * width, width, "action_time_mlp_in")
    return targets | _dense("action_time_mlp_out", width, width, "action_time_mlp_out")


def _paligemma_targets(
    vision: variants.SiglipConfig, llm: variants.GemmaConfig, vocab_size: int, paligemma: str
) -> Targets:
    """SigLIP, its projection and the language model, under the PyTorch module path ``paligemma``."""
    language_model = f"{paligemma}.language_model"
    targets = _vision_targets(vision, llm.width, paligemma)
    embedder = f"{LLM}/embedder/input_embedding"
    targets |= _single(embedder, f"{language_model}.embed_tokens.weight", (vocab_size, llm.width))
    return targets | _gemma_targets(llm, "", language_model, adarms=False)


def _targets(config: Pi0Config) -> Targets:
    targets = _paligemma_targets(config.vision_config, config.llm_config, config.vocab_size, _PALIGEMMA)
    targets |= _gemma_targets(config.expert_config, EXPERT_SUFFIX, _EXPERT, adarms=config.pi05)
    return targets | _projection_targets(config)


def build_fast_rules(config: Pi0FastConfig) -> list[ParamRule]:
    """Every leaf of a π0-FAST checkpoint with the tensors of ``Pi0FastPytorch`` (module ``paligemma``) it becomes."""
    shapes = paligemma_shapes(config.vision_config, config.llm_config, config.vocab_size)
    targets = _paligemma_targets(config.vision_config, config.llm_config, config.vocab_size, FAST_PALIGEMMA)
    return [ParamRule(source, shapes[source], leaf_targets) for source, leaf_targets in targets.items()]


def build_rules(config: Pi0Config) -> list[ParamRule]:
    """Every leaf of a published checkpoint of ``config`` (``param_layout.published_shapes``) with the PyTorch tensors
    it becomes."""
    shapes, targets = published_shapes(config), _targets(config)
    if shapes.keys() != targets.keys():
        raise RuntimeError(
            f"The conversion rules miss published leaves {sorted(shapes.keys() - targets.keys())} or name "
            f"unpublished ones {sorted(targets.keys() - shapes.keys())}"
        )
    return [ParamRule(source, shapes[source], leaf_targets) for source, leaf_targets in targets.items()]


# ---------------------------------------------------------------------------------------------------------------------
# Conversion of in-memory parameters.


def check_precision(precision: str) -> None:
    if precision not in NUMPY_DTYPES:
        raise ValueError(f"precision must be one of {sorted(NUMPY_DTYPES)}, got {precision!r}")


def target_dtype(target: TensorTarget, precision: Precision) -> np.dtype:
    """The dtype ``target`` is written in for ``precision``."""
    check_precision(precision)
    return NUMPY_DTYPES["float32" if target.keep_float32 else precision]


def convert_leaf(
    rule: ParamRule, array: np.ndarray, precision: Precision, allow_nonfinite: bool = False
) -> Iterator[tuple[str, np.ndarray]]:
    """The PyTorch tensors of one published leaf. Refuses a leaf holding NaN or infinity unless ``allow_nonfinite``."""
    check_float_leaf(rule.source, array.dtype)
    if not allow_nonfinite and not np.isfinite(array.astype(np.float32, copy=False)).all():
        bad = int((~np.isfinite(array.astype(np.float32, copy=False))).sum())
        raise CheckpointMismatchError(
            f"{rule.source} holds {bad} NaN/infinite values (a corrupted file?); --allow-nonfinite converts anyway"
        )
    for target in rule.targets:
        tensor = target.extract(array).astype(target_dtype(target, precision), copy=False)
        yield target.key, np.ascontiguousarray(tensor)


def convert_params(
    flat_params: Mapping[str, np.ndarray], config: Pi0Config, precision: Precision = "float32"
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(torch key, array)`` for every tensor of the PyTorch state dict (``lm_head`` excluded).

    ``flat_params`` maps ``/``-joined published paths (unwrapped, without the ``params`` root) to arrays. The whole
    tree is checked against ``config`` before anything is yielded.
    """
    check_params({path: tuple(a.shape) for path, a in flat_params.items()}, config)
    for rule in build_rules(config):
        yield from convert_leaf(rule, np.asarray(flat_params[rule.source]), precision)


def convert_fast_params(
    flat_params: Mapping[str, np.ndarray], config: Pi0FastConfig, precision: Precision = "float32"
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(torch key, array)`` for every tensor of ``Pi0FastPytorch``'s state dict, the tree checked first."""
    check_fast_params({path: tuple(a.shape) for path, a in flat_params.items()}, config)
    for rule in build_fast_rules(config):
        yield from convert_leaf(rule, np.asarray(flat_params[rule.source]), precision)
