"""PaliGemma (SigLIP + Gemma) and the action expert, run as one transformer with shared attention.

Every layer attends jointly over the concatenation of the token streams (prefix → language model weights, suffix →
action-expert weights): each stream has its own norms, projections and MLP, but queries, keys and values of all
streams meet in one attention. Module names follow the published PyTorch checkpoints, so their state dicts load as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from openpi.models.variants import GemmaConfig, SiglipConfig
from openpi.models_pytorch.gemma import GemmaDecoderLayer, GemmaModel, apply_rotary, rotary_cos_sin
from openpi.models_pytorch.siglip import SiglipVisionTower

# Per layer: (keys, values) after rotary embedding, ``[B, kv_heads, L, head_dim]``.
KVCache = list[tuple[torch.Tensor, torch.Tensor]]

# Additive bias for masked attention logits: finite, so a fully masked (padding) row stays a uniform distribution.
MASKED_LOGIT = -2.3819763e38


class MultiModalProjector(nn.Module):
    def __init__(self, vision_width: int, llm_width: int):
        super().__init__()
        self.linear = nn.Linear(vision_width, llm_width)


class PaliGemmaModel(nn.Module):
    def __init__(self, vision: SiglipConfig, llm: GemmaConfig, vocab_size: int):
        super().__init__()
        self.vision_tower = SiglipVisionTower(vision)
        self.multi_modal_projector = MultiModalProjector(vision.hidden_size, llm.width)
        self.language_model = GemmaModel(llm, vocab_size=vocab_size)


class PaliGemma(nn.Module):
    def __init__(self, vision: SiglipConfig, llm: GemmaConfig, vocab_size: int):
        super().__init__()
        self.model = PaliGemmaModel(vision, llm, vocab_size)


class GemmaExpert(nn.Module):
    def __init__(self, expert: GemmaConfig, cond_dim: int | None):
        super().__init__()
        self.model = GemmaModel(expert, cond_dim=cond_dim)


class PaliGemmaWithExpertModel(nn.Module):
    """The vision-language model and the action expert with joint attention (optionally reusing a prefix KV cache)."""

    def __init__(self, vision: SiglipConfig, llm: GemmaConfig, expert: GemmaConfig, vocab_size: int, use_adarms: bool):
        super().__init__()
        self.paligemma = PaliGemma(vision, llm, vocab_size)
        self.gemma_expert = GemmaExpert(expert, cond_dim=expert.width if use_adarms else None)
        self.gradient_checkpointing = False

    @property
    def _language_model(self) -> GemmaModel:
        return self.paligemma.model.language_model

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 224, 224]`` → image tokens ``[B, patches, llm_width]`` (not scaled)."""
        features = self.paligemma.model.vision_tower(images, self.gradient_checkpointing and self.training)
        return self.paligemma.model.multi_modal_projector.linear(features)

    def embed_language_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` → raw embeddings ``[B, L, llm_width]`` (the caller scales by sqrt(width))."""
        return self._language_model.embed_tokens(tokens)

    def forward(
        self,
        streams: list[torch.Tensor | None],
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        adarms_cond: list[torch.Tensor | None],
        past_key_values: KVCache | None = None,
        key_bias: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor | None], KVCache]:
        """Runs all layers over ``[prefix, suffix]`` streams (either may be None).

        Args:
            streams: ``[prefix_embs [B, Lp, W_llm] | None, suffix_embs [B, Ls, W_expert] | None]``.
            attention_mask: bool ``[B, Lq, Lk]``, Lq = the streams' total length, Lk = cached length + Lq.
            positions: rotary positions ``[B, Lq]`` of the queried tokens.
            adarms_cond: per-stream conditioning for adaptive norms (None for plain norms).
            past_key_values: keys/values of earlier tokens (the prefix cache) that the queries may attend to.
            key_bias: float ``[B, Lk]`` added to every attention logit into each key: ``log(k)`` makes a key count as
                k identical keys (the deduplicated pruned prefix in training), a zero-valued straight-through gate
                passes the pruner a gradient (budget training); None adds nothing.

        Returns:
            The final-normed output of each given stream, and the keys/values of this call (cache included).
        """
        reference = next(s for s in streams if s is not None)
        if key_bias is None:
            bias = torch.zeros(attention_mask.shape, dtype=reference.dtype, device=reference.device)
        else:
            bias = key_bias.to(reference.dtype)[:, None, :].expand(attention_mask.shape)
        bias = bias.masked_fill(~attention_mask, MASKED_LOGIT)[:, None]  # [B, 1, Lq, Lk], broadcast over heads
        rope = rotary_cos_sin(positions, self._language_model.config.head_dim)
        experts = (self._language_model, self.gemma_expert.model)
        cache: KVCache = []
        for index in range(len(self._language_model.layers)):
            layers = [model.layers[index] for model in experts]
            past = None if past_key_values is None else past_key_values[index]
            args = (layers, streams, adarms_cond, rope, bias, past)
            if self.gradient_checkpointing and self.training:
                streams, kv = checkpoint(joint_layer, *args, use_reentrant=False)
            else:
                streams, kv = joint_layer(*args)
            cache.append(kv)
        outputs = [
            None if x is None else model.norm(x, cond)[0]
            for model, x, cond in zip(experts, streams, adarms_cond, strict=True)
        ]
        return outputs, cache


def joint_layer(
    layers: list[GemmaDecoderLayer],
    streams: list[torch.Tensor | None],
    conds: list[torch.Tensor | None],
    rope: tuple[torch.Tensor, torch.Tensor],
    bias: torch.Tensor,
    past: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[list[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]:
    """One transformer layer: per-stream norms and projections, one shared attention, per-stream MLPs."""
    queries, keys, values, gates = [], [], [], []
    for layer, x, cond in zip(layers, streams, conds, strict=True):
        if x is None:
            gates.append(None)
            continue
        q, k, v, gate = layer.attention_inputs(x, cond)  # [B, heads, L_stream, hd], k and v [B, kv_heads, L_stream, hd]
        queries.append(q)
        keys.append(k)
        values.append(v)
        gates.append(gate)
    cos, sin = rope
    q = apply_rotary(torch.cat(queries, dim=2), cos, sin)  # [B, heads, Lq, hd], Lq = the streams' total length
    k = apply_rotary(torch.cat(keys, dim=2), cos, sin)  # [B, kv_heads, Lq, hd]
    v = torch.cat(values, dim=2)
    if past is not None:  # the cached prefix comes first: Lk = L_cache + Lq
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)  # [B, heads, Lq, hd]
    batch, heads, length, head_dim = attn.shape
    attn = attn.transpose(1, 2).reshape(batch, length, heads * head_dim)  # [B, Lq, heads*hd], split per stream below

    outputs: list[torch.Tensor | None] = []
    start = 0
    for layer, x, cond, gate in zip(layers, streams, conds, gates, strict=True):
        if x is None:
            outputs.append(None)
            continue
        stream_attn = attn[:, start : start + x.shape[1]]
        start += x.shape[1]
        outputs.append(layer.feed_forward(x, stream_attn, gate, cond))
    return outputs, (k, v)
