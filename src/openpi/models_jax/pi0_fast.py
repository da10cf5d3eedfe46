"""π0-FAST in JAX over the published orbax tree (``PaliGemma/img``, ``PaliGemma/llm``): the same model and the same
upstream semantics as ``models_pytorch.pi0_fast_pytorch`` (see its docstring), as pure functions compiled with
``jax.jit``. Decoding runs in a ``lax.while_loop`` over a KV cache of fixed size (prefix + decode steps)."""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models.tokenizer import EOS_ID
from openpi.models_jax import gemma, siglip
from openpi.models_jax import params as jax_params
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0 import ParamNode, lora_scales, make_attention_mask

Params = dict[str, Any]


class Embedded(NamedTuple):
    embs: jax.Array  # [B, L, W]
    mask: jax.Array  # [B, L] bool
    ar_mask: jax.Array  # [B, L] int32


class Decoded(NamedTuple):
    tokens: jax.Array  # [B, S] int32; steps after an all-rows EOS stay 0
    steps: jax.Array  # scalar int32, steps run
    logits: jax.Array | None  # [B, S, V] float32 (when asked for)


def embed_image(params: Params, config: Pi0FastConfig, images: jax.Array) -> jax.Array:
    """``[B, H, W, 3]`` in [-1, 1] → image tokens ``[B, patches, W]``."""
    return siglip.encode_images(params["PaliGemma"]["img"], images, jnp.dtype(config.dtype))


def embed_inputs(params: Params, config: Pi0FastConfig, obs: JaxObservation) -> Embedded:
    """Image tokens of every camera (in order), then the prompt's embeddings scaled by sqrt(width)."""
    embs, masks = [], []
    for name, images in obs.images.items():
        tokens = embed_image(params, config, images)
        embs.append(tokens)
        masks.append(jnp.broadcast_to(obs.image_masks[name][:, None], tokens.shape[:2]))
    embs.append(gemma.embed_tokens(params["PaliGemma"]["llm"], obs.tokenized_prompt, jnp.dtype(config.dtype)))
    masks.append(obs.tokenized_prompt_mask.astype(bool))
    mask = jnp.concatenate(masks, axis=1)
    text_ar = jnp.zeros_like(obs.tokenized_prompt) if obs.token_ar_mask is None else obs.token_ar_mask
    ar = jnp.concatenate([jnp.zeros((mask.shape[0], mask.shape[1] - text_ar.shape[1]), jnp.int32), text_ar], 1)
    return Embedded(jnp.concatenate(embs, axis=1), mask, ar.astype(jnp.int32))


def _run(params: Params, config: Pi0FastConfig, embs, attention, positions, cache=None, remat: bool = False):
    """The language model (final-normed hidden states and the keys/values, the cache's included)."""
    llm = params["PaliGemma"]["llm"]
    (hidden, _), cache = gemma.transformer(
        llm, [embs, None], attention, positions, [None, None], cache, remat=remat, lora_scales=lora_scales(config)
    )
    return hidden, cache


def _logits(params: Params, hidden: jax.Array) -> jax.Array:
    """Tied head: ``[B, L, W]`` → float32 ``[B, L, V]``."""
    return hidden.astype(jnp.float32) @ params["PaliGemma"]["llm"]["embedder"]["input_embedding"].T


@functools.partial(jax.jit, static_argnums=(1, 3))
def token_logits(params: Params, config: Pi0FastConfig, obs: JaxObservation, remat: bool = False) -> jax.Array:
    """Logits ``[B, T-1, V]`` of the prompt positions ``0..T-2``; rotary positions ``0..L-2`` over every token."""
    embs, mask, ar = embed_inputs(params, config, obs)
    attention = make_attention_mask(mask, ar)[:, :-1, :-1]
    positions = jnp.broadcast_to(jnp.arange(embs.shape[1] - 1), (embs.shape[0], embs.shape[1] - 1))
    hidden, _ = _run(params, config, embs[:, :-1], attention, positions, remat=remat)
    return _logits(params, hidden[:, -(obs.tokenized_prompt.shape[1] - 1) :])


def token_nll(params: Params, config: Pi0FastConfig, obs: JaxObservation, remat: bool = False) -> jax.Array:
    """Per-token NLL ``[B, T-1]`` of the prompt tokens ``1..T-1``."""
    logp = jax.nn.log_softmax(token_logits(params, config, obs, remat), axis=-1)
    return -jnp.take_along_axis(logp, obs.tokenized_prompt[:, 1:, None], axis=-1)[..., 0]


def compute_loss(params: Params, config: Pi0FastConfig, obs: JaxObservation, remat: bool = False) -> jax.Array:
    """Per-sample mean NLL ``[B]`` over the tokens ``token_loss_mask`` marks (``remat``: recompute each layer's
    activations in the backward pass)."""
    if obs.token_loss_mask is None:
        raise ValueError("π0-FAST training needs token_ar_mask and token_loss_mask (tokenize with actions)")
    loss_mask = obs.token_loss_mask[:, 1:].astype(jnp.float32)
    return (token_nll(params, config, obs, remat) * loss_mask).sum(-1) / jnp.clip(loss_mask.sum(-1), 1.0)


def _right_align(embs, mask, attention):
    """Rolls each row left by (its last valid index + 1): the row ends with its last valid token."""
    length = mask.shape[1]
    shift = (mask * jnp.arange(length)).max(-1) + 1  # [B]
    index = (jnp.arange(length)[None] + shift[:, None]) % length  # [B, L]
    rows = jnp.arange(mask.shape[0])[:, None]
    return embs[rows, index], mask[rows, index], attention[rows[:, :, None], index[:, :, None], index[:, None, :]]


def _prefill(params: Params, config: Pi0FastConfig, embs, attention, positions, steps: int) -> tuple:
    """The prefix pass over a cache sized for the decode steps (zeros beyond the prefix, as upstream: a fully
    masked row averages over them); returns the last logit and the cache ``[layers, B, L + steps, K, D]``."""
    llm = config.llm_config
    batch, length = attention.shape[:2]
    zeros = jnp.zeros((llm.depth, batch, steps, llm.num_kv_heads, llm.head_dim), embs.dtype)
    padded = jnp.concatenate([jnp.zeros((batch, length, steps), bool), attention], axis=-1)
    hidden, cache = _run(params, config, embs, padded, positions, gemma.KVCache(zeros, zeros))
    # [zeros | prefix] -> [prefix | zeros]: slot L + s holds decode step s.
    keys, values = (jnp.roll(t, -steps, axis=2) for t in cache)
    return _logits(params, hidden[:, -1:])[:, 0], gemma.KVCache(keys, values)


@functools.partial(jax.jit, static_argnums=(1, 3, 4, 5))
def sample_tokens(
    params: Params,
    config: Pi0FastConfig,
    obs: JaxObservation,
    steps: int,
    temperature: float = 0.0,
    return_logits: bool = False,
    rng: jax.Array | None = None,
) -> Decoded:
    """Decodes after the prefix (greedy at temperature 0) for at most ``steps`` tokens."""
    embs, mask, ar = embed_inputs(params, config, obs)
    embs, mask, attention = _right_align(embs, mask, make_attention_mask(mask, ar))
    batch, prefill_size = mask.shape
    prefill_len = mask.sum(-1)
    logit, cache = _prefill(params, config, embs, attention, jnp.cumsum(mask, axis=-1) - 1, steps)
    slots = jnp.arange(prefill_size + steps)
    window_start = (prefill_size - prefill_len)[:, None, None]
    rng = jax.random.key(0) if rng is None else rng
    vocab = logit.shape[-1]

    def body(carry):
        step, logit, tokens, all_logits, cache, _, key = carry
        key, draw_key = jax.random.split(key)
        token = jnp.argmax(logit, -1) if temperature <= 0 else jax.random.categorical(draw_key, logit / temperature)
        tokens = tokens.at[:, step].set(token.astype(jnp.int32))
        if return_logits:
            all_logits = all_logits.at[:, step].set(logit)
        token_embs = gemma.embed_tokens(params["PaliGemma"]["llm"], token[:, None], embs.dtype)
        in_window = (slots[None, None] >= window_start) & (slots[None, None] < prefill_size + step)
        attention = jnp.concatenate([in_window, jnp.ones((batch, 1, 1), bool)], axis=-1)
        positions = (prefill_len + step + 1)[:, None]
        hidden, grown = _run(params, config, token_embs, attention, positions, cache)
        cache = gemma.KVCache(
            *(jax.lax.dynamic_update_slice_in_dim(old, new[:, :, -1:], prefill_size + step, axis=2)
              for old, new in zip(cache, grown, strict=True))
        )  # fmt: skip
        done = jnp.all(token == EOS_ID)
        return step + 1, _logits(params, hidden)[:, 0], tokens, all_logits, cache, done, key

    def cond(carry):
        step, *_, done, _ = carry
        return (~done) & (step < steps)

    tokens = jnp.zeros((batch, steps), jnp.int32)
    all_logits = jnp.zeros((batch, steps, vocab), jnp.float32) if return_logits else jnp.zeros(())
    init = (jnp.int32(0), logit, tokens, all_logits, cache, jnp.bool_(False), rng)
    step, _, tokens, all_logits, *_ = jax.lax.while_loop(cond, body, init)
    return Decoded(tokens, step, all_logits if return_logits else None)


class Pi0Fast(nnx.Module):
    """π0-FAST in JAX; its parameters are the published tree (``nnx.state(model)`` has the checkpoint's paths)."""

    def __init__(self, config: Pi0FastConfig, params: Params):
        self.config = config
        for name, value in params.items():
            setattr(self, name, ParamNode(value) if isinstance(value, dict) else nnx.Param(jnp.asarray(value)))

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | os.PathLike, config: Pi0FastConfig) -> Pi0Fast:
        return cls(config, jax_params.load_params(checkpoint_dir, config))

    def params(self) -> Params:
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def compute_loss(self, obs: JaxObservation) -> jax.Array:
        return compute_loss(self.params(), self.config, obs)

    def sample_tokens(
        self,
        obs: JaxObservation,
        max_decoding_steps: int | None = None,
        temperature: float | None = None,
        rng: jax.Array | None = None,
        return_logits: bool = False,
    ) -> Decoded:
        steps = self.config.max_decoding_steps if max_decoding_steps is None else max_decoding_steps
        temperature = self.config.temperature if temperature is None else temperature
        return sample_tokens(self.params(), self.config, obs, steps, float(temperature), return_logits, rng)
