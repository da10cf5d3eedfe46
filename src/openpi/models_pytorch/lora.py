"""Low-rank adapters (LoRA) for the Gemma projections, as upstream's ``*_lora`` variants define them.

``y = x Wᵀ + scale · (x Aᵀ) Bᵀ`` with ``A [rank, in]`` and ``B [out, rank]``, both initialised ``normal(0, 0.01)``
(upstream's init: the adapted model starts close to, not exactly at, the base model) and ``scale = alpha / rank``
(``alpha / sqrt(rank)`` with rank-stabilised scaling). The base weight keeps its name (``q_proj.weight``), so a
base checkpoint loads into an adapted model; the adapters add ``q_proj.lora_a`` / ``q_proj.lora_b``.
:func:`merge_lora` folds them into the base weights for a plain checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from openpi.models.variants import GemmaConfig

LORA_INIT_STD = 0.01
LORA_SUFFIXES = (".lora_a", ".lora_b")


class LoRALinear(nn.Linear):
    """A bias-free linear layer with a low-rank adapter."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, rslora: bool = False) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.empty(out_features, rank))
        nn.init.normal_(self.lora_a, std=LORA_INIT_STD)
        nn.init.normal_(self.lora_b, std=LORA_INIT_STD)
        self.scale = alpha / (math.sqrt(rank) if rslora else rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapter = F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return F.linear(x, self.weight) + self.scale * adapter

    def merged_weight(self) -> torch.Tensor:
        """``W + scale · B A`` (computed in float32, returned in the weight's dtype)."""
        delta = self.lora_b.float() @ self.lora_a.float()
        return (self.weight.float() + self.scale * delta).to(self.weight.dtype)


def projection(in_features: int, out_features: int, config: GemmaConfig) -> nn.Linear:
    """A Gemma projection: with an adapter when ``config.lora_rank`` is set."""
    if config.lora_rank:
        return LoRALinear(in_features, out_features, config.lora_rank, config.lora_alpha, config.lora_rslora)
    return nn.Linear(in_features, out_features, bias=False)


def is_lora_parameter(name: str) -> bool:
    return name.endswith(LORA_SUFFIXES)


@torch.no_grad()
def merge_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` with every adapter folded into its base weight and the adapter keys dropped: the
    weights of the same model without adapters."""
    merged = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            merged[f"{name}.weight"] = module.merged_weight()
    return {key: merged.get(key, value) for key, value in model.state_dict().items() if not is_lora_parameter(key)}
