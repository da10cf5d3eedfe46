"""The published π0 / π0.5 parameter tree (a JAX checkpoint's orbax ``params``), for both frameworks.

Every leaf's ``/``-joined path and shape follow from a :class:`Pi0Config` (:func:`published_shapes`), so a stored tree
is checked before any weight is read: unknown, missing and misshapen leaves are reported at once. The tree stacks
each transformer's layers on a leading axis and stores attention as einsum tensors. LoRA variants add upstream's
adapter leaves (:func:`lora_shapes`). The JAX model's parameters are this tree; the JAX → PyTorch converter maps
each of its leaves to PyTorch tensors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from openpi.models import variants
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig

Shape = tuple[int, ...]

IMG = "PaliGemma/img"
ENCODER = f"{IMG}/Transformer/encoderblock"
LLM = "PaliGemma/llm"
LLM_LAYERS = f"{LLM}/layers"
EXPERT_SUFFIX = "_1"  # the action expert's leaves beside the language model's in the shared PaliGemma/llm tree


class CheckpointMismatchError(ValueError):
    """The parameter tree does not match the model config; the message lists every problem found."""


# ---------------------------------------------------------------------------------------------------------------------
# The leaves of a config.


def _dense(path: str, in_dim: int, out_dim: int, depth: int | None = None) -> dict[str, Shape]:
    """A dense layer's kernel ``[in, out]`` and bias, stacked over ``depth`` layers unless None."""
    stack = () if depth is None else (depth,)
    return {f"{path}/kernel": (*stack, in_dim, out_dim), f"{path}/bias": (*stack, out_dim)}


def _vision_shapes(vision: variants.SiglipConfig, llm_width: int) -> dict[str, Shape]:
    w, depth, mlp, heads = (
        vision.hidden_size,
        vision.num_hidden_layers,
        vision.intermediate_size,
        vision.num_attention_heads,
    )
    if w % heads:
        raise ValueError(f"SigLIP hidden_size {w} is not divisible by num_attention_heads {heads}")
    head_dim, p = w // heads, vision.patch_size
    shapes = {
        f"{IMG}/embedding/kernel": (p, p, 3, w),  # HWIO patch kernel
        f"{IMG}/embedding/bias": (w,),
        f"{IMG}/pos_embedding": (1, vision.num_patches, w),
    }
    for norm in ("LayerNorm_0", "LayerNorm_1"):
        shapes |= {f"{ENCODER}/{norm}/scale": (depth, w), f"{ENCODER}/{norm}/bias": (depth, w)}
    attention = f"{ENCODER}/MultiHeadDotProductAttention_0"
    for name in ("query", "key", "value"):
        shapes[f"{attention}/{name}/kernel"] = (depth, w, heads, head_dim)
        shapes[f"{attention}/{name}/bias"] = (depth, heads, head_dim)
    shapes |= {f"{attention}/out/kernel": (depth, heads, head_dim, w), f"{attention}/out/bias": (depth, w)}
    shapes |= _dense(f"{ENCODER}/MlpBlock_0/Dense_0", w, mlp, depth)
    shapes |= _dense(f"{ENCODER}/MlpBlock_0/Dense_1", mlp, w, depth)
    shapes |= {f"{IMG}/Transformer/encoder_norm/scale": (w,), f"{IMG}/Transformer/encoder_norm/bias": (w,)}
    return shapes | _dense(f"{IMG}/head", w, llm_width)


def _norm_shapes(path: str, width: int, depth: int | None, adarms: bool) -> dict[str, Shape]:
    """An RMSNorm's ``scale`` or, with ``adarms``, the dense layer producing (scale, shift, gate) from the time
    embedding; ``depth`` None is an unstacked (final) norm."""
    if adarms:
        return _dense(f"{path}/Dense_0", width, 3 * width, depth)
    return {f"{path}/scale": (width,) if depth is None else (depth, width)}


def _gemma_shapes(gemma: variants.GemmaConfig, suffix: str, adarms: bool) -> dict[str, Shape]:
    """One Gemma tower inside the shared ``PaliGemma/llm`` tree (the action expert's leaves carry ``suffix``)."""
    w, depth, mlp = gemma.width, gemma.depth, gemma.mlp_dim
    heads, kv_heads, head_dim = gemma.num_heads, gemma.num_kv_heads, gemma.head_dim
    attn, ffn = f"{LLM_LAYERS}/attn", f"{LLM_LAYERS}/mlp{suffix}"
    shapes = {
        f"{attn}/q_einsum{suffix}/w": (depth, heads, w, head_dim),
        f"{attn}/kv_einsum{suffix}/w": (depth, 2, kv_heads, w, head_dim),
        f"{attn}/attn_vec_einsum{suffix}/w": (depth, heads, head_dim, w),
        f"{ffn}/gating_einsum": (depth, 2, w, mlp),
        f"{ffn}/linear": (depth, mlp, w),
    }
    shapes |= _norm_shapes(f"{LLM_LAYERS}/pre_attention_norm{suffix}", w, depth, adarms)
    shapes |= _norm_shapes(f"{LLM_LAYERS}/pre_ffw_norm{suffix}", w, depth, adarms)
    return shapes | _norm_shapes(f"{LLM}/final_norm{suffix}", w, None, adarms)


def _projection_shapes(config: Pi0Config) -> dict[str, Shape]:
    width, action_dim = config.expert_config.width, config.action_dim
    shapes = _dense("action_in_proj", action_dim, width) | _dense("action_out_proj", width, action_dim)
    if config.pi05:
        return shapes | _dense("time_mlp_in", width, width) | _dense("time_mlp_out", width, width)
    shapes |= _dense("state_proj", action_dim, width) | _dense("action_time_mlp_in", 2 * width, width)
    return shapes | _dense("action_time_mlp_out", width, width)


def paligemma_shapes(vision: variants.SiglipConfig, llm: variants.GemmaConfig, vocab_size: int) -> dict[str, Shape]:
    """The ``PaliGemma`` leaves (SigLIP with its projection ``head``, the language model and its embedding): all of
    π0-FAST's tree, and the part of π0's without the action expert."""
    shapes = _vision_shapes(vision, llm.width)
    shapes[f"{LLM}/embedder/input_embedding"] = (vocab_size, llm.width)
    return shapes | _gemma_shapes(llm, "", adarms=False)


def published_shapes(config: Pi0Config) -> dict[str, Shape]:
    """Every leaf of a published checkpoint of ``config`` (adapters excluded): ``/``-joined path -> shape."""
    shapes = paligemma_shapes(config.vision_config, config.llm_config, config.vocab_size)
    shapes |= _gemma_shapes(config.expert_config, EXPERT_SUFFIX, adarms=config.pi05)
    return shapes | _projection_shapes(config)


def model_shapes(config: Pi0Config | Pi0FastConfig) -> dict[str, Shape]:
    """The published leaves of a π0 / π0.5 model, or of a π0-FAST one (PaliGemma alone); adapters excluded."""
    if isinstance(config, Pi0FastConfig):
        return paligemma_shapes(config.vision_config, config.llm_config, config.vocab_size)
    return published_shapes(config)


def check_model_params(param_shapes: Mapping[str, Shape], config: Pi0Config | Pi0FastConfig) -> None:
    """:func:`check_params` or, for π0-FAST, :func:`check_fast_params`."""
    if isinstance(config, Pi0FastConfig):
        check_fast_params(param_shapes, config)
    else:
        check_params(param_shapes, config)


def lora_shapes(config: Pi0Config | Pi0FastConfig) -> dict[str, Shape]:
    """The adapter leaves of the LoRA variants among the language model (no suffix) and the expert (``_1``):
    ``lora_a`` / ``lora_b`` inside each attention einsum (the weight's last axis, then its second-to-last, replaced by
    the rank) and ``gating_einsum_lora_a`` / ``_b``, ``linear_lora_a`` / ``_b`` beside the MLP weights."""
    shapes: dict[str, Shape] = {}
    gemmas = [("", config.llm_config)]
    if isinstance(config, Pi0Config):
        gemmas.append((EXPERT_SUFFIX, config.expert_config))
    for suffix, gemma in gemmas:
        rank = gemma.lora_rank
        if not rank:
            continue
        depth, heads, kv, width, dim, mlp = (
            gemma.depth, gemma.num_heads, gemma.num_kv_heads, gemma.width, gemma.head_dim, gemma.mlp_dim
        )  # fmt: skip
        attn, ffn = f"{LLM_LAYERS}/attn", f"{LLM_LAYERS}/mlp{suffix}"
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


def base_variant(config: Pi0Config | Pi0FastConfig) -> Pi0Config | Pi0FastConfig:
    """``config`` with its Gemma variants stripped of their adapters (what a merged or base checkpoint holds)."""

    def strip(variant: variants.GemmaConfig) -> str:
        return variants.spell_variant(dataclasses.replace(variant, lora_rank=0, lora_alpha=0, lora_rslora=0))

    if isinstance(config, Pi0FastConfig):
        return dataclasses.replace(config, paligemma_variant=strip(config.llm_config))
    return dataclasses.replace(
        config, paligemma_variant=strip(config.llm_config), action_expert_variant=strip(config.expert_config)
    )


def check_float_leaf(path: str, dtype: np.dtype) -> None:
    """Raises :class:`CheckpointMismatchError` unless the leaf at ``path`` holds floats (every published leaf does)."""
    if not np.issubdtype(dtype, np.floating) and dtype != np.dtype(ml_dtypes.bfloat16):
        raise CheckpointMismatchError(f"{path} has non-float dtype {dtype}")


# ---------------------------------------------------------------------------------------------------------------------
# Architecture inference and validation.


def infer_model_config(param_shapes: Mapping[str, Shape], **fields: Any) -> Pi0Config:
    """Derives π0 vs π0.5 and every dimension from the parameter tree.

    ``fields`` sets what the weights cannot tell (``action_horizon``, ``max_token_len``, ``dtype``, ...).
    Raises :class:`CheckpointMismatchError` naming the leaves it needs when they are absent.
    """
    required = {
        "embedding": f"{IMG}/embedding/kernel",
        "pos": f"{IMG}/pos_embedding",
        "vision_norm": f"{ENCODER}/LayerNorm_0/scale",
        "vision_query": f"{ENCODER}/MultiHeadDotProductAttention_0/query/kernel",
        "vision_mlp": f"{ENCODER}/MlpBlock_0/Dense_0/kernel",
        "embedder": f"{LLM}/embedder/input_embedding",
        "action_in": "action_in_proj/kernel",
    }
    for suffix in ("", EXPERT_SUFFIX):
        required[f"q{suffix}"] = f"{LLM_LAYERS}/attn/q_einsum{suffix}/w"
        required[f"kv{suffix}"] = f"{LLM_LAYERS}/attn/kv_einsum{suffix}/w"
        required[f"mlp{suffix}"] = f"{LLM_LAYERS}/mlp{suffix}/gating_einsum"
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
        action_expert_variant=variants.spell_variant(gemma(EXPERT_SUFFIX)),
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
    leaves, and shape mismatches. Empty when the tree matches."""
    return _architecture_differences(param_shapes, config) + shape_problems(param_shapes, published_shapes(config))


def shape_problems(param_shapes: Mapping[str, Shape], expected: Mapping[str, Shape]) -> list[str]:
    """Unknown, missing and misshapen leaves of a tree against the ``expected`` shapes."""
    problems = [
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


def check_fast_params(param_shapes: Mapping[str, Shape], config: Pi0FastConfig) -> None:
    """Raises :class:`CheckpointMismatchError` listing every leaf of a π0-FAST tree that differs from ``config``'s
    (the PaliGemma leaves alone: π0-FAST has no action expert)."""
    expected = paligemma_shapes(config.vision_config, config.llm_config, config.vocab_size)
    problems = shape_problems(param_shapes, expected)
    if problems:
        raise CheckpointMismatchError(
            f"The checkpoint does not match the π0-FAST config ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )
