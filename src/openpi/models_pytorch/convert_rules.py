"""Conversion rules from the JAX/orbax π0 / π0.5 parameter tree to the PyTorch state-dict layout.

The JAX tree stacks each transformer's layers on a leading axis and stores attention as einsum tensors. Every JAX
leaf is described by a :class:`ParamRule` naming the PyTorch tensors it becomes, with their shapes and how to extract
them. The rules are built from a :class:`Pi0Config`, so the expected tree is known before any weight is read:
unknown, missing and misshapen leaves are all reported at once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import ml_dtypes
import numpy as np

from openpi.models import variants
from openpi.models.pi0_config import Pi0Config
from openpi.models_pytorch.weights import keeps_float32

Precision = Literal["bfloat16", "float32"]
Shape = tuple[int, ...]

_PALIGEMMA = "paligemma_with_expert.paligemma.model"
_VISION = f"{_PALIGEMMA}.vision_tower.vision_model"
_LLM = f"{_PALIGEMMA}.language_model"
_EXPERT = "paligemma_with_expert.gemma_expert.model"
_IMG = "PaliGemma/img"
_ENCODER = f"{_IMG}/Transformer/encoderblock"
_LAYERS = "PaliGemma/llm/layers"

NUMPY_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


class CheckpointMismatchError(ValueError):
    """The parameter tree does not match the model config; the message lists every problem found."""


@dataclasses.dataclass(frozen=True)
class TensorTarget:
    """One PyTorch tensor produced from a JAX leaf."""

    key: str
    shape: Shape
    extract: Callable[[np.ndarray], np.ndarray]

    @property
    def keep_float32(self) -> bool:
        """Stays float32 in a bfloat16 export: the model's own list, ``weights.FLOAT32_PARAMETERS``."""
        return keeps_float32(self.key)


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """A JAX leaf (path joined with ``/``), its expected shape and the PyTorch tensors it becomes."""

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


def _take(index: int, transform: Callable[[np.ndarray], np.ndarray], a: np.ndarray) -> np.ndarray:
    return transform(a[index])


# ---------------------------------------------------------------------------------------------------------------------
# Rules.


def _single(
    source: str,
    shape: Shape,
    key: str,
    out_shape: Shape,
    transform: Callable[[np.ndarray], np.ndarray] = _identity,
) -> ParamRule:
    return ParamRule(source, shape, (TensorTarget(key, out_shape, transform),))


def _stacked(
    source: str,
    shape: Shape,
    outputs: Sequence[tuple[str, Shape, Callable[[np.ndarray], np.ndarray]]],
) -> ParamRule:
    """A leaf stacked over ``shape[0]`` layers; ``outputs`` are ``(key template with {i}, shape, transform)`` applied
    to each layer's slice. Targets are ordered layer by layer."""
    targets = tuple(
        TensorTarget(key.format(i=i), out_shape, functools.partial(_take, i, transform))
        for i in range(shape[0])
        for key, out_shape, transform in outputs
    )
    return ParamRule(source, shape, targets)


def _dense(source: str, in_dim: int, out_dim: int, key: str) -> list[ParamRule]:
    return [
        _single(f"{source}/kernel", (in_dim, out_dim), f"{key}.weight", (out_dim, in_dim), _dense_kernel),
        _single(f"{source}/bias", (out_dim,), f"{key}.bias", (out_dim,)),
    ]


def _stacked_dense(source: str, depth: int, in_dim: int, out_dim: int, key: str) -> list[ParamRule]:
    return [
        _stacked(
            f"{source}/kernel",
            (depth, in_dim, out_dim),
            [(f"{key}.weight", (out_dim, in_dim), _dense_kernel)],
        ),
        _stacked(f"{source}/bias", (depth, out_dim), [(f"{key}.bias", (out_dim,), _identity)]),
    ]


def _vision_rules(vision: variants.SiglipConfig, llm_width: int) -> list[ParamRule]:
    w, depth, mlp = vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size
    heads = vision.num_attention_heads
    if w % heads:
        raise ValueError(f"SigLIP hidden_size {w} is not divisible by num_attention_heads {heads}")
    head_dim, p = w // heads, vision.patch_size
    layer = f"{_VISION}.encoder.layers.{{i}}"
    rules = [
        _single(
            f"{_IMG}/embedding/kernel",
            (p, p, 3, w),
            f"{_VISION}.embeddings.patch_embedding.weight",
            (w, 3, p, p),
            _patch_kernel,
        ),
        _single(f"{_IMG}/embedding/bias", (w,), f"{_VISION}.embeddings.patch_embedding.bias", (w,)),
        _single(
            f"{_IMG}/pos_embedding",
            (1, vision.num_patches, w),
            f"{_VISION}.embeddings.position_embedding.weight",
            (vision.num_patches, w),
            _drop_leading_axis,
        ),
    ]
    for jax_name, torch_name in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
        for jax_param, torch_param in (("scale", "weight"), ("bias", "bias")):
            rules.append(
                _stacked(
                    f"{_ENCODER}/{jax_name}/{jax_param}",
                    (depth, w),
                    [(f"{layer}.{torch_name}.{torch_param}", (w,), _identity)],
                )
            )
    attention = f"{_ENCODER}/MultiHeadDotProductAttention_0"
    for jax_name, torch_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        proj = f"{layer}.self_attn.{torch_name}"
        rules.append(
            _stacked(
                f"{attention}/{jax_name}/kernel",
                (depth, w, heads, head_dim),
                [(f"{proj}.weight", (w, w), _siglip_heads_in)],
            )
        )
        rules.append(
            _stacked(f"{attention}/{jax_name}/bias", (depth, heads, head_dim), [(f"{proj}.bias", (w,), _flatten)])
        )
    out_proj = f"{layer}.self_attn.out_proj"
    rules.append(
        _stacked(f"{attention}/out/kernel", (depth, heads, head_dim, w), [(f"{out_proj}.weight", (w, w), _heads_out)])
    )
    rules.append(_stacked(f"{attention}/out/bias", (depth, w), [(f"{out_proj}.bias", (w,), _identity)]))
    rules += _stacked_dense(f"{_ENCODER}/MlpBlock_0/Dense_0", depth, w, mlp, f"{layer}.mlp.fc1")
    rules += _stacked_dense(f"{_ENCODER}/MlpBlock_0/Dense_1", depth, mlp, w, f"{layer}.mlp.fc2")
    rules += [
        _single(f"{_IMG}/Transformer/encoder_norm/scale", (w,), f"{_VISION}.post_layernorm.weight", (w,)),
        _single(f"{_IMG}/Transformer/encoder_norm/bias", (w,), f"{_VISION}.post_layernorm.bias", (w,)),
    ]
    rules += _dense(f"{_IMG}/head", w, llm_width, f"{_PALIGEMMA}.multi_modal_projector.linear")
    return rules


def _gemma_norm_rules(jax_norm: str, torch_norm: str, width: int, depth: int | None, adarms: bool) -> list[ParamRule]:
    """An RMSNorm (``scale``) or, with ``adarms``, the dense layer producing (scale, shift, gate) from the time
    embedding. ``depth`` None means an unstacked (final) norm."""
    if adarms:
        if depth is None:
            return _dense(f"{jax_norm}/Dense_0", width, 3 * width, f"{torch_norm}.dense")
        return _stacked_dense(f"{jax_norm}/Dense_0", depth, width, 3 * width, f"{torch_norm}.dense")
    if depth is None:
        return [_single(f"{jax_norm}/scale", (width,), f"{torch_norm}.weight", (width,))]
    return [_stacked(f"{jax_norm}/scale", (depth, width), [(f"{torch_norm}.weight", (width,), _identity)])]


def _gemma_rules(gemma: variants.GemmaConfig, suffix: str, prefix: str, adarms: bool) -> list[ParamRule]:
    """One Gemma tower inside the shared ``PaliGemma/llm`` tree; the action expert's leaves carry ``suffix`` ``_1``."""
    w, depth, mlp = gemma.width, gemma.depth, gemma.mlp_dim
    heads, kv_heads, head_dim = gemma.num_heads, gemma.num_kv_heads, gemma.head_dim
    layer = f"{prefix}.layers.{{i}}"
    attn = f"{_LAYERS}/attn"
    rules = [
        _stacked(
            f"{attn}/q_einsum{suffix}/w",
            (depth, heads, w, head_dim),
            [(f"{layer}.self_attn.q_proj.weight", (heads * head_dim, w), _einsum_heads_in)],
        ),
        _stacked(
            f"{attn}/kv_einsum{suffix}/w",
            (depth, 2, kv_heads, w, head_dim),
            [
                (
                    f"{layer}.self_attn.k_proj.weight",
                    (kv_heads * head_dim, w),
                    functools.partial(_take, 0, _einsum_heads_in),
                ),
                (
                    f"{layer}.self_attn.v_proj.weight",
                    (kv_heads * head_dim, w),
                    functools.partial(_take, 1, _einsum_heads_in),
                ),
            ],
        ),
        _stacked(
            f"{attn}/attn_vec_einsum{suffix}/w",
            (depth, heads, head_dim, w),
            [(f"{layer}.self_attn.o_proj.weight", (w, heads * head_dim), _heads_out)],
        ),
        _stacked(
            f"{_LAYERS}/mlp{suffix}/gating_einsum",
            (depth, 2, w, mlp),
            [
                (f"{layer}.mlp.gate_proj.weight", (mlp, w), functools.partial(_take, 0, _dense_kernel)),
                (f"{layer}.mlp.up_proj.weight", (mlp, w), functools.partial(_take, 1, _dense_kernel)),
            ],
        ),
        _stacked(
            f"{_LAYERS}/mlp{suffix}/linear",
            (depth, mlp, w),
            [(f"{layer}.mlp.down_proj.weight", (w, mlp), _dense_kernel)],
        ),
    ]
    rules += _gemma_norm_rules(f"{_LAYERS}/pre_attention_norm{suffix}", f"{layer}.input_layernorm", w, depth, adarms)
    rules += _gemma_norm_rules(f"{_LAYERS}/pre_ffw_norm{suffix}", f"{layer}.post_attention_layernorm", w, depth, adarms)
    rules += _gemma_norm_rules(f"PaliGemma/llm/final_norm{suffix}", f"{prefix}.norm", w, None, adarms)
    return rules


def _projection_rules(config: Pi0Config) -> list[ParamRule]:
    width, action_dim = config.expert_config.width, config.action_dim
    rules = _dense("action_in_proj", action_dim, width, "action_in_proj")
    rules += _dense("action_out_proj", width, action_dim, "action_out_proj")
    if config.pi05:
        rules += _dense("time_mlp_in", width, width, "time_mlp_in")
        rules += _dense("time_mlp_out", width, width, "time_mlp_out")
    else:
        rules += _dense("state_proj", action_dim, width, "state_proj")
        rules += _dense("action_time_mlp_in", 2 * width, width, "action_time_mlp_in")
        rules += _dense("action_time_mlp_out", width, width, "action_time_mlp_out")
    return rules


def build_rules(config: Pi0Config) -> list[ParamRule]:
    """Every JAX leaf a checkpoint of ``config`` holds, with the PyTorch tensors it becomes."""
    llm = config.llm_config
    rules = _vision_rules(config.vision_config, llm.width)
    rules.append(
        _single(
            "PaliGemma/llm/embedder/input_embedding",
            (config.vocab_size, llm.width),
            f"{_LLM}.embed_tokens.weight",
            (config.vocab_size, llm.width),
        )
    )
    rules += _gemma_rules(llm, "", _LLM, adarms=False)
    rules += _gemma_rules(config.expert_config, "_1", _EXPERT, adarms=config.pi05)
    rules += _projection_rules(config)
    return rules


def expected_jax_shapes(config: Pi0Config) -> dict[str, Shape]:
    """The JAX parameter paths and shapes of a checkpoint of ``config``."""
    return {rule.source: rule.shape for rule in build_rules(config)}


# ---------------------------------------------------------------------------------------------------------------------
# Architecture inference and validation.


def infer_model_config(param_shapes: Mapping[str, Shape], **fields: Any) -> Pi0Config:
    """Derives π0 vs π0.5 and every dimension from the parameter tree.

    ``fields`` sets what the weights cannot tell (``action_horizon``, ``max_token_len``, ``dtype``, ...).
    Raises :class:`CheckpointMismatchError` naming the leaves it needs when they are absent.
    """
    required = {
        "embedding": f"{_IMG}/embedding/kernel",
        "pos": f"{_IMG}/pos_embedding",
        "vision_norm": f"{_ENCODER}/LayerNorm_0/scale",
        "vision_query": f"{_ENCODER}/MultiHeadDotProductAttention_0/query/kernel",
        "vision_mlp": f"{_ENCODER}/MlpBlock_0/Dense_0/kernel",
        "embedder": "PaliGemma/llm/embedder/input_embedding",
        "action_in": "action_in_proj/kernel",
    }
    for suffix in ("", "_1"):
        required[f"q{suffix}"] = f"{_LAYERS}/attn/q_einsum{suffix}/w"
        required[f"kv{suffix}"] = f"{_LAYERS}/attn/kv_einsum{suffix}/w"
        required[f"mlp{suffix}"] = f"{_LAYERS}/mlp{suffix}/gating_einsum"
    missing = sorted(path for path in required.values() if path not in param_shapes)
    if missing:
        raise CheckpointMismatchError(
            "Cannot tell the architecture: the parameter tree lacks\n  " + "\n  ".join(missing)
        )
    s = {name: tuple(param_shapes[path]) for name, path in required.items()}

    def gemma(suffix: str) -> variants.GemmaConfig:
        depth, heads, width, head_dim = s[f"q{suffix}"]
        return variants.GemmaConfig(
            width=width,
            depth=depth,
            mlp_dim=s[f"mlp{suffix}"][-1],
            num_heads=heads,
            num_kv_heads=s[f"kv{suffix}"][2],
            head_dim=head_dim,
        )

    patch, _, _, hidden = s["embedding"]
    vision = variants.SiglipConfig(
        hidden_size=hidden,
        num_hidden_layers=s["vision_norm"][0],
        num_attention_heads=s["vision_query"][2],
        intermediate_size=s["vision_mlp"][-1],
        patch_size=patch,
        image_size=math.isqrt(s["pos"][1]) * patch,
    )
    return Pi0Config(
        pi05="time_mlp_in/kernel" in param_shapes,
        paligemma_variant=variants.spell_variant(gemma("")),
        action_expert_variant=variants.spell_variant(gemma("_1")),
        vision_variant=variants.spell_variant(vision),
        vocab_size=s["embedder"][0],
        action_dim=s["action_in"][0],
        **fields,
    )


def _architecture_differences(param_shapes: Mapping[str, Shape], config: Pi0Config) -> list[str]:
    try:
        found = infer_model_config(param_shapes)
    except (CheckpointMismatchError, ValueError):
        return []
    described = {
        "pi05": lambda c: c.pi05,
        "language model": lambda c: c.llm_config,
        "action expert": lambda c: c.expert_config,
        "vision tower": lambda c: c.vision_config,
        "vocab_size": lambda c: c.vocab_size,
        "action_dim": lambda c: c.action_dim,
    }
    return [
        f"{name}: checkpoint has {get(found)}, config has {get(config)}"
        for name, get in described.items()
        if get(found) != get(config)
    ]


def find_param_problems(param_shapes: Mapping[str, Shape], config: Pi0Config) -> list[str]:
    """Every difference between a parameter tree and what ``config`` expects: architecture, unknown and missing
    leaves, and shape mismatches. Empty when the tree converts cleanly."""
    expected = expected_jax_shapes(config)
    problems = _architecture_differences(param_shapes, config)
    problems += [
        f"unknown parameter {path} {list(param_shapes[path])}" for path in sorted(set(param_shapes) - set(expected))
    ]
    problems += [
        f"missing parameter {path} {list(expected[path])}" for path in sorted(set(expected) - set(param_shapes))
    ]
    problems += [
        f"shape of {path} is {list(param_shapes[path])}, config expects {list(expected[path])}"
        for path in sorted(set(expected) & set(param_shapes))
        if tuple(param_shapes[path]) != expected[path]
    ]
    return problems


def check_params(param_shapes: Mapping[str, Shape], config: Pi0Config) -> None:
    """Raises :class:`CheckpointMismatchError` listing every problem :func:`find_param_problems` finds."""
    problems = find_param_problems(param_shapes, config)
    if problems:
        raise CheckpointMismatchError(
            f"The checkpoint does not match the model config ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )


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
    """The PyTorch tensors of one JAX leaf. Refuses a leaf holding NaN or infinity unless ``allow_nonfinite``."""
    if not np.issubdtype(array.dtype, np.floating) and array.dtype != NUMPY_DTYPES["bfloat16"]:
        raise CheckpointMismatchError(f"{rule.source} has non-float dtype {array.dtype}")
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

    ``flat_params`` maps ``/``-joined JAX paths (unwrapped, without the ``params`` root) to arrays. The whole tree is
    checked against ``config`` before anything is yielded.
    """
    check_params({path: tuple(a.shape) for path, a in flat_params.items()}, config)
    for rule in build_rules(config):
        yield from convert_leaf(rule, np.asarray(flat_params[rule.source]), precision)
