"""Model helpers shared by the tests: randomised weights, small LoRA variants."""

from __future__ import annotations

import torch

from openpi.models.pi0_config import tiny_config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch


def randomized(model: PI0Pytorch, seed: int = 0, scale: float = 0.1) -> PI0Pytorch:
    """``model`` with every parameter drawn from N(0, scale²): a fresh model zero-initialises some layers (e.g. the
    image path is silent), which hides whether images, states or gradients reach where they should."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.data = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale
    return model


LORA_LLM = "width=64,depth=4,mlp_dim=128,num_heads=8,num_kv_heads=1,head_dim=16,lora_rank=4,lora_alpha=64"
LORA_EXPERT = "width=64,depth=4,mlp_dim=128,num_heads=8,num_kv_heads=1,head_dim=16,lora_rank=2,lora_alpha=32"

# A tiny pruned model for compiled inference and training: its random, uncentred scores vote for varied counts.
COMPILED_PRUNED_CONFIG = tiny_config(
    vision_variant="tiny_112",
    action_horizon=4,
    max_token_len=32,
    token_pruning_enabled=True,
    token_prune_center_patches=False,
)
