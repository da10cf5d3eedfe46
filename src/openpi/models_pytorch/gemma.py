"""Gemma decoder pieces: RMS norms (plain and adaptive), rotary embeddings, attention projections, gated MLP.

The attention itself lives in :mod:`openpi.models_pytorch.paligemma_with_expert`, because π0 runs the language model
and the action expert as one joint attention over both token streams.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from openpi.models.variants import GemmaConfig
from openpi.models_pytorch.lora import projection

RMS_EPS = 1e-6
ROPE_BASE = 10_000.0


class RMSNorm(nn.Module):
    """Gemma RMS norm, computed in float32.

    Plain (``cond_dim=None``): ``x * rsqrt(mean(x²) + eps) * (1 + weight)``.
    Adaptive (adaRMS, π0.5 action expert): a dense layer maps the conditioning vector to ``scale, shift, gate``; the
    output is ``normed * (1 + scale) + shift`` and ``gate`` scales the residual branch that follows.
    """

    def __init__(self, dim: int, cond_dim: int | None = None):
        super().__init__()
        if cond_dim is None:
            self.weight = nn.Parameter(torch.zeros(dim))
            self.dense = None
        else:
            self.dense = nn.Linear(cond_dim, 3 * dim)
            nn.init.zeros_(self.dense.weight)
            nn.init.zeros_(self.dense.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the normalised ``x`` (in ``x.dtype``) and the residual gate (None for the plain norm)."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        if self.dense is None:
            return (normed * (1.0 + self.weight.float())).to(x.dtype), None
        if cond is None:
            raise ValueError("An adaptive RMSNorm needs the conditioning vector (the π0.5 time embedding)")
        modulation = self.dense(cond.to(self.dense.weight.dtype)).float()  # [B, 3W] or per token [B, T, 3W]
        if modulation.ndim == 2:
            modulation = modulation[:, None, :]
        scale, shift, gate = modulation.chunk(3, dim=-1)
        return (normed * (1.0 + scale) + shift).to(x.dtype), gate.to(x.dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """``x + y``, or ``x + gate * y`` after an adaptive norm."""
    return x + y if gate is None else x + gate * y


def rotary_cos_sin(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables ``[B, 1, L, head_dim / 2]`` (float32) for integer ``positions [B, L]``."""
    exponent = torch.arange(0, head_dim // 2, device=positions.device, dtype=torch.float32) * 2.0 / head_dim
    # Dividing by the timescale (as the JAX Gemma does) rather than multiplying by its inverse: at positions in the
    # hundreds the two differ by float32 rounding that shows in the logits.
    angles = positions.float()[..., None] / ROPE_BASE**exponent
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the two halves of the head dimension of ``x [B, H, L, D]`` (computed in float32)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return rotated.to(x.dtype)


class GemmaAttentionProjections(nn.Module):
    """Query/key/value/output projections of one expert (multi-query attention: few key/value heads)."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = projection(config.width, config.num_heads * config.head_dim, config)
        self.k_proj = projection(config.width, config.num_kv_heads * config.head_dim, config)
        self.v_proj = projection(config.width, config.num_kv_heads * config.head_dim, config)
        self.o_proj = projection(config.num_heads * config.head_dim, config.width, config)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projects ``x [B, L, width]`` to queries ``[B, H, L, D]`` and keys/values ``[B, KV, L, D]``."""
        batch, length, _ = x.shape

        def heads(t: torch.Tensor, n: int) -> torch.Tensor:
            return t.view(batch, length, n, self.head_dim).transpose(1, 2)

        return (
            heads(self.q_proj(x), self.num_heads),
            heads(self.k_proj(x), self.num_kv_heads),
            heads(self.v_proj(x), self.num_kv_heads),
        )


class GemmaMLP(nn.Module):
    """Gated feed-forward block: ``down(gelu_tanh(gate(x)) * up(x))``."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.gate_proj = projection(config.width, config.mlp_dim, config)
        self.up_proj = projection(config.width, config.mlp_dim, config)
        self.down_proj = projection(config.mlp_dim, config.width, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaDecoderLayer(nn.Module):
    """The weights of one expert in one transformer layer (the attention is shared between experts)."""

    def __init__(self, config: GemmaConfig, cond_dim: int | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.width, cond_dim)
        self.self_attn = GemmaAttentionProjections(config)
        self.post_attention_layernorm = RMSNorm(config.width, cond_dim)
        self.mlp = GemmaMLP(config)

    def attention_inputs(
        self, x: torch.Tensor, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Queries ``[B, H, L, D]``, keys and values ``[B, KV, L, D]`` of the normed ``x``, and the residual gate."""
        normed, gate = self.input_layernorm(x, cond)
        return (*self.self_attn.qkv(normed), gate)

    def feed_forward(
        self, x: torch.Tensor, attn_out: torch.Tensor, gate: torch.Tensor | None, cond: torch.Tensor | None
    ):
        """Residual around the attention output, then the gated MLP block with its own residual."""
        x = gated_residual(x, self.self_attn.o_proj(attn_out), gate)
        normed, gate = self.post_attention_layernorm(x, cond)
        return gated_residual(x, self.mlp(normed), gate)


class GemmaModel(nn.Module):
    """A stack of decoder layers and the final norm; the language model also owns the token embedding."""

    def __init__(self, config: GemmaConfig, *, vocab_size: int | None = None, cond_dim: int | None = None):
        super().__init__()
        self.config = config
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, config.width)
            nn.init.normal_(self.embed_tokens.weight, std=1.0 / math.sqrt(config.width))
        self.layers = nn.ModuleList([GemmaDecoderLayer(config, cond_dim) for _ in range(config.depth)])
        self.norm = RMSNorm(config.width, cond_dim)
