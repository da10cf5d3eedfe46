"""π0-FAST in PyTorch: PaliGemma alone, predicting an action chunk as FAST tokens after the prompt.

Sequence = image tokens of every camera, then the prompt tokens. Tokens attend by blocks (``token_ar_mask``): the
images and the prefix text are one bidirectional block, each postfix token ("Action: ", the action tokens, "|", EOS)
opens its own (causal). Training is next-token cross-entropy on the postfix; inference decodes with a KV cache.

Upstream's semantics kept on purpose (the published checkpoints were trained and evaluated with them):

* the loss's rotary positions are ``0..L-2`` over all tokens, padding and masked cameras included;
* decoding right-aligns the prefix (padding first), numbers it ``cumsum(mask) - 1``, and gives decode step ``s``
  the position ``prefix_len + s + 1`` (one position skipped);
* each decode step attends to the last ``prefix_len`` prefix slots and the tokens decoded so far: with a masked
  camera before the prompt this window holds the masked camera's tokens instead of the first valid ones (and those
  tokens' prefill rows, fully masked, average uniformly over a cache sized for the decode steps);
* decoding stops early only when every row emits EOS at the same step.

With ``token_pruning_enabled`` the decode prefix keeps only the image tokens π0.5's LightVLA pruner selects (at its
budget); positions stay those of the unpruned prefix, and every decode step reads the shorter KV cache.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from openpi.models.observation import Observation
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models.tokenizer import EOS_ID
from openpi.models_pytorch.gemma import GemmaModel, rotary_cos_sin
from openpi.models_pytorch.paligemma_with_expert import MASKED_LOGIT, KVCache, PaliGemma, joint_layer
from openpi.models_pytorch.pi0_pytorch import make_attention_mask
from openpi.models_pytorch.token_pruner import ImageTokenPruner, PrunerSettings
from openpi.models_pytorch.weights import keeps_float32


class Embedded(NamedTuple):
    embs: torch.Tensor  # [B, L, W] image tokens of every camera, then the prompt
    mask: torch.Tensor  # [B, L] bool
    ar_mask: torch.Tensor  # [B, L] long, 1 where a causal block starts


class Decoded(NamedTuple):
    tokens: torch.Tensor  # [B, S] long PaliGemma ids; steps after an all-rows EOS stay 0
    steps: int  # steps run (S = max_decoding_steps; fewer when every row emitted EOS at once)
    logits: torch.Tensor | None  # [B, S, V] float32, the logits each token was drawn from (if asked for)


class Pi0FastPytorch(nn.Module):
    """The π0-FAST model (module names ``paligemma.model.*`` as π0's PaliGemma, without the action expert)."""

    def __init__(self, config: Pi0FastConfig):
        super().__init__()
        self.config = config
        self.paligemma = PaliGemma(config.vision_config, config.llm_config, config.vocab_size)
        self.gradient_checkpointing = False
        settings = PrunerSettings(keep_tokens=config.token_prune_keep_tokens, keep_ratio=config.token_prune_keep_ratio)
        self.token_pruner = ImageTokenPruner(settings) if config.token_pruning_enabled else None
        if config.dtype == "bfloat16":
            for name, param in self.named_parameters():
                param.data = param.data.to(torch.float32 if keeps_float32(name) else torch.bfloat16)

    @property
    def token_pruning_enabled(self) -> bool:
        return self.token_pruner is not None

    # Gradient checkpointing (SigLIP's and the language model's layers in training), named as π0's switches.
    def gradient_checkpointing_enable(self) -> None:
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    @property
    def pruner(self) -> ImageTokenPruner:
        """The LightVLA pruner (its budgets and telemetry); raises if pruning is disabled."""
        if self.token_pruner is None:
            raise RuntimeError("Token pruning is disabled; build the model with token_pruning_enabled=True")
        return self.token_pruner

    # Serving-time budgets, as π0's setters; None restores the config's value.
    def set_token_pruner_keep_ratio(self, keep_ratio: float | None) -> None:
        self.pruner.keep_ratio = self.config.token_prune_keep_ratio if keep_ratio is None else keep_ratio

    def set_token_pruner_keep_tokens(self, keep_tokens: int | None) -> None:
        self.pruner.keep_tokens = self.config.token_prune_keep_tokens if keep_tokens is None else keep_tokens

    @property
    def language_model(self) -> GemmaModel:
        return self.paligemma.model.language_model

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    # ----------------------------------------------------------------------------------------------- embedding
    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] → image tokens ``[B, patches, W]`` (SigLIP, then the projection)."""
        model = self.paligemma.model
        features = model.vision_tower(images, self.gradient_checkpointing and self.training)
        return model.multi_modal_projector.linear(features).to(self.compute_dtype)

    def embed_inputs(self, obs: Observation) -> Embedded:
        """Image tokens of every camera (in the observation's order), then the prompt's scaled embeddings."""
        if obs.tokenized_prompt is None or obs.tokenized_prompt_mask is None:
            raise ValueError("π0-FAST needs tokenized_prompt and tokenized_prompt_mask (the FAST tokenization)")
        embs, masks = [], []
        for name, images in obs.images.items():
            tokens = self.embed_image(images)
            embs.append(tokens)
            masks.append(obs.image_masks[name][:, None].expand(-1, tokens.shape[1]))
        width = self.config.llm_config.width
        text = self.language_model.embed_tokens(obs.tokenized_prompt) * math.sqrt(width)
        embs.append(text.to(self.compute_dtype))
        masks.append(obs.tokenized_prompt_mask)
        mask = torch.cat(masks, dim=1)
        text_ar = torch.zeros_like(obs.tokenized_prompt) if obs.token_ar_mask is None else obs.token_ar_mask.long()
        image_ar = text_ar.new_zeros(mask.shape[0], mask.shape[1] - text_ar.shape[1])
        return Embedded(torch.cat(embs, dim=1), mask, torch.cat([image_ar, text_ar], 1))

    # -------------------------------------------------------------------------------------------- transformer
    def run(
        self, embs: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, past: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """The language model over ``embs [B, Lq, W]`` attending by ``attention`` bool ``[B, Lq, Lk]`` (Lk = cached
        + Lq); returns the final-normed hidden states and the keys/values (cache included)."""
        bias = torch.zeros(attention.shape, dtype=embs.dtype, device=embs.device)
        bias = bias.masked_fill(~attention, MASKED_LOGIT)[:, None]  # [B, 1, Lq, Lk]
        rope = rotary_cos_sin(positions, self.config.llm_config.head_dim)
        x, cache = embs, []
        for index, layer in enumerate(self.language_model.layers):
            args = ([layer], [x], [None], rope, bias, None if past is None else past[index])
            if self.gradient_checkpointing and self.training:
                (x,), kv = torch.utils.checkpoint.checkpoint(joint_layer, *args, use_reentrant=False)
            else:
                (x,), kv = joint_layer(*args)
            cache.append(kv)
        return self.language_model.norm(x)[0], cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied output head: ``hidden [B, L, W]`` → float32 logits ``[B, L, V]``."""
        return hidden.float() @ self.language_model.embed_tokens.weight.float().T

    # ----------------------------------------------------------------------------------------------- training
    def token_logits(self, obs: Observation) -> torch.Tensor:
        """Logits ``[B, T-1, V]`` of the prompt's positions ``0..T-2`` (each predicting the next token)."""
        embs, mask, ar = self.embed_inputs(obs)
        attention = make_attention_mask(mask, ar)[:, :-1, :-1]
        length = embs.shape[1] - 1
        positions = torch.arange(length, device=embs.device)[None].expand(embs.shape[0], -1)
        hidden, _ = self.run(embs[:, :-1], attention, positions)
        return self.logits(hidden[:, -(obs.tokenized_prompt.shape[1] - 1) :])

    def token_nll(self, obs: Observation) -> torch.Tensor:
        """Negative log-likelihood ``[B, T-1]`` of each prompt token ``1..T-1`` (unmasked)."""
        logp = F.log_softmax(self.token_logits(obs), dim=-1)
        return -logp.gather(-1, obs.tokenized_prompt[:, 1:, None]).squeeze(-1)

    def forward(self, obs: Observation, actions: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss ``[B]``: the mean NLL over the tokens ``token_loss_mask`` marks. ``actions`` is unused
        (the sequence holds them as tokens); the trainers pass it as to π0."""
        if obs.token_loss_mask is None or obs.token_ar_mask is None:
            raise ValueError("π0-FAST training needs token_ar_mask and token_loss_mask (tokenize with actions)")
        loss_mask = obs.token_loss_mask[:, 1:].float()
        return (self.token_nll(obs) * loss_mask).sum(-1) / loss_mask.sum(-1).clamp(min=1.0)

    # ---------------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def sample_tokens(
        self,
        obs: Observation,
        max_decoding_steps: int | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        return_logits: bool = False,
    ) -> Decoded:
        """Decodes after the prefix (greedy at temperature 0) with a KV cache; see the module docstring."""
        steps = self.config.max_decoding_steps if max_decoding_steps is None else max_decoding_steps
        temperature = self.config.temperature if temperature is None else temperature
        embs, mask, attention, positions = self._decode_prefix(obs)
        batch, prefill_size = mask.shape
        prefill_len = positions.amax(-1) + 1  # [B] the unpruned prefix's valid length
        hidden, cache = self._prefill(embs, attention, positions, steps)
        logit = self.logits(hidden[:, -1:])[:, 0]  # [B, V]
        # Decode step s attends to cache slots [prefill_size - valid prefix slots, prefill_size + s].
        window_start = (prefill_size - mask.sum(-1))[:, None, None]
        tokens = torch.zeros(batch, steps, dtype=torch.long, device=embs.device)
        all_logits = [] if return_logits else None
        for step in range(steps):
            token = _draw(logit, temperature, generator)
            tokens[:, step] = token
            if all_logits is not None:
                all_logits.append(logit)
            if bool((token == EOS_ID).all()) or step == steps - 1:
                break
            token_embs = self.language_model.embed_tokens(token[:, None]) * math.sqrt(self.config.llm_config.width)
            slots = torch.arange(prefill_size + step + 1, device=embs.device)[None, None]
            positions = (prefill_len + step + 1)[:, None]
            hidden, cache = self.run(token_embs.to(self.compute_dtype), slots >= window_start, positions, cache)
            logit = self.logits(hidden)[:, 0]
        logits = None if all_logits is None else torch.stack(all_logits, dim=1)
        return Decoded(tokens, step + 1, logits)

    def _decode_prefix(self, obs: Observation) -> tuple[torch.Tensor, ...]:
        """The right-aligned prefix: embeddings, validity, attention ``[B, L, L]`` and rotary positions (the count of
        valid tokens before each token in the unpruned prefix), its image tokens pruned if enabled."""
        embs, mask, ar = self.embed_inputs(obs)
        positions = mask.long().cumsum(-1) - 1
        if self.token_pruner is not None:
            embs, mask, positions = self._prune(embs, mask, positions, obs.tokenized_prompt.shape[1])
            ar = torch.zeros_like(positions)
        return _right_align(embs, mask, make_attention_mask(mask, ar), positions)

    def _prune(
        self, embs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, num_text: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keeps the image tokens the pruner selects (scored against the prefix text: prompt and state)."""
        n = embs.shape[1] - num_text
        text, text_mask = embs[:, n:], mask[:, n:]
        pruned = self.token_pruner(embs[:, :n], text, text_mask, mask[:, :n], positions[:, :n])
        return (
            torch.cat([pruned.tokens.to(embs.dtype), text], dim=1),
            torch.cat([pruned.mask, text_mask], dim=1),
            torch.cat([pruned.positions, positions[:, n:]], dim=1),
        )

    def _prefill(
        self, embs: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, KVCache]:
        """The prefix pass. Upstream attends over a cache already sized for the decode steps (zeros beyond the
        prefix): a fully masked row (a masked camera's token) averages uniformly over those zeros too, and the decode
        window later reads such tokens' keys and values. ``steps`` zero keys/values, never attended to otherwise,
        reproduce that; they are dropped from the returned cache."""
        batch, length = attention.shape[:2]
        llm = self.config.llm_config
        zeros = embs.new_zeros(batch, llm.num_kv_heads, steps, llm.head_dim)
        padded = torch.cat([attention.new_zeros(batch, length, steps), attention], dim=-1)  # [B, L, steps + L]
        hidden, cache = self.run(embs, padded, positions, [(zeros, zeros)] * llm.depth)
        return hidden, [(k[:, :, steps:], v[:, :, steps:]) for k, v in cache]


def _right_align(
    embs: torch.Tensor, mask: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rolls each row left by (its last valid index + 1), so that the row ends with its last valid token."""
    length = mask.shape[1]
    arange = torch.arange(length, device=mask.device)
    shift = (mask.long() * arange).amax(-1) + 1  # [B]
    index = (arange[None] + shift[:, None]) % length  # [B, L] source index of each slot
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None]
    rolled = attention[rows[:, :, None], index[:, :, None], index[:, None, :]]
    return embs[rows, index], mask[rows, index], rolled, positions[rows, index]


def _draw(logit: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """The argmax token at temperature 0, else a sample of ``softmax(logit / temperature)``; ``[B]``."""
    if temperature <= 0.0:
        return logit.argmax(-1)
    probs = torch.softmax(logit / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
