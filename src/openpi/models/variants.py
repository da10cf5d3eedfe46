"""Architecture variants of the two transformers inside π0: Gemma (language model and action expert) and SigLIP.

A variant is named (``gemma_2b``, ``So400m/14``, ...) or spelled out as ``field=value`` pairs separated by commas,
e.g. ``"width=64,depth=4,mlp_dim=128,num_heads=8,num_kv_heads=1,head_dim=16"``. The explicit form lets a config
(and a checkpoint's ``config.json``) describe any size without registering it first.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """Dimensions of a Gemma decoder, and its low-rank adapters (``lora_rank`` 0: none) on the attention (q, k, v,
    o) and MLP (gate, up, down) projections, scaled by ``lora_alpha / lora_rank`` (``/ sqrt(rank)`` with
    ``lora_rslora``)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    lora_rank: int = 0
    lora_alpha: int = 0
    lora_rslora: int = 0


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """Dimensions of a SigLIP vision transformer (pre-LayerNorm ViT with learned position embeddings)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int = 14
    image_size: int = 224

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


GEMMA_VARIANTS: dict[str, GemmaConfig] = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    # Upstream's LoRA variants: rank 16 / alpha 16 on the language model, rank 32 / alpha 32 on the action expert.
    "gemma_2b_lora": GemmaConfig(
        width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256, lora_rank=16, lora_alpha=16
    ),
    "gemma_300m_lora": GemmaConfig(
        width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256, lora_rank=32, lora_alpha=32
    ),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
}

SIGLIP_VARIANTS: dict[str, SiglipConfig] = {
    "So400m/14": SiglipConfig(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304),
    "tiny": SiglipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    # 112×112 input (64 patches per camera): the CPU debug configs train ~5x faster than at 224.
    "tiny_112": SiglipConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=112
    ),
}

_C = TypeVar("_C", GemmaConfig, SiglipConfig)


def _resolve(variant: str, registry: dict[str, _C], cls: type[_C]) -> _C:
    if variant in registry:
        return registry[variant]
    if "=" not in variant:
        raise ValueError(f"Unknown {cls.__name__} variant {variant!r}; known: {sorted(registry)} or 'field=value,...'")
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, int] = {}
    for item in variant.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in fields:
            raise ValueError(f"Unknown {cls.__name__} field {key!r} in variant {variant!r}; fields: {sorted(fields)}")
        values[key] = int(value)
    try:
        return cls(**values)
    except TypeError as e:
        raise ValueError(f"Incomplete {cls.__name__} variant {variant!r}: {e}") from None


def get_gemma_config(variant: str) -> GemmaConfig:
    """Returns the Gemma dimensions of a named or explicit variant."""
    return _resolve(variant, GEMMA_VARIANTS, GemmaConfig)


def get_siglip_config(variant: str) -> SiglipConfig:
    """Returns the SigLIP dimensions of a named or explicit variant."""
    return _resolve(variant, SIGLIP_VARIANTS, SiglipConfig)


def spell_variant(config: GemmaConfig | SiglipConfig) -> str:
    """Spells a config out as an explicit variant string (the inverse of the ``get_*_config`` parsers); fields at
    their defaults are left out."""
    return ",".join(
        f"{f.name}={getattr(config, f.name)}"
        for f in dataclasses.fields(config)
        if f.default is dataclasses.MISSING or getattr(config, f.name) != f.default
    )
