"""SigLIP vision tower: a pre-LayerNorm ViT over 14×14 patches with learned position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from openpi.models.variants import SiglipConfig

LAYER_NORM_EPS = 1e-6


class SiglipEmbeddings(nn.Module):
    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, config.hidden_size, config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)
        nn.init.normal_(self.position_embedding.weight, std=config.hidden_size**-0.5)

    def forward(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``[B, 3, H, W]`` images → ``[B, patches, hidden]`` tokens in ``dtype`` (embedding math in its own dtype)."""
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixels.to(weight.dtype)).flatten(2).transpose(1, 2)
        return (patches + self.position_embedding.weight).to(dtype)


class SiglipAttention(nn.Module):
    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class SiglipMLP(nn.Module):
    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers)])


class SiglipVisionTransformer(nn.Module):
    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, pixels: torch.Tensor, gradient_checkpointing: bool = False) -> torch.Tensor:
        x = self.embeddings(pixels, dtype=self.post_layernorm.weight.dtype)
        for layer in self.encoder.layers:
            x = checkpoint(layer, x, use_reentrant=False) if gradient_checkpointing else layer(x)
        return self.post_layernorm(x)


class SiglipVisionTower(nn.Module):
    """Images ``[B, 3, 224, 224]`` in [-1, 1] → patch features ``[B, 256, hidden]``."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.config = config
        self.vision_model = SiglipVisionTransformer(config)

    def forward(self, pixels: torch.Tensor, gradient_checkpointing: bool = False) -> torch.Tensor:
        expected = (3, self.config.image_size, self.config.image_size)
        if tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"SigLIP expects images of shape [B, {', '.join(map(str, expected))}], got {tuple(pixels.shape)}"
            )
        return self.vision_model(pixels, gradient_checkpointing)
