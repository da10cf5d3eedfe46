"""π0 / π0.5 in JAX (flax NNX), with LightVLA pruning: the same model as ``models_pytorch.pi0_pytorch``.

The module's parameters *are* the published orbax ``params`` tree (``nnx.state(model)`` has the checkpoint's paths),
so a published checkpoint loads without renaming. The math is pure functions of that tree, compiled with
``jax.jit``: ``compute_loss`` (one compiled graph per batch shape and mode) and ``sample_actions`` (the prefix is
embedded, pruned and cached once, then ``num_steps`` Euler steps attend to the cache).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from openpi.models import rtc as _rtc
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models.variants import GemmaConfig
from openpi.models_jax import gemma, rtc, siglip
from openpi.models_jax import params as _params
from openpi.models_jax import token_pruner as tp
from openpi.models_jax.observation import JaxObservation

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PruneSettings:
    """What the pruner does on a call (static under ``jit``)."""

    enabled: bool
    keep_tokens: int | None = None
    keep_ratio: float | None = None
    collect_stats: bool = False

    @classmethod
    def from_config(cls, config: Pi0Config, *, collect_stats: bool = False) -> PruneSettings:
        """The config's pruning and serving budget (the one budget training trains for)."""
        return cls(
            config.token_pruning_enabled, config.token_prune_keep_tokens, config.token_prune_keep_ratio, collect_stats
        )


class PrefixInputs(NamedTuple):
    """The embedded prefix before the pruner's selection."""

    patches: jax.Array  # [B, N, W] image tokens of every camera, camera-major
    patch_mask: jax.Array  # [B, N] bool
    patch_positions: jax.Array  # [B, N] int32
    lang: jax.Array  # [B, T, W] prompt embeddings (scaled by sqrt(W))
    lang_mask: jax.Array  # [B, T] bool
    lang_positions: jax.Array  # [B, T] int32


class Sampled(NamedTuple):
    actions: jax.Array  # [B, H, action_dim]
    keep: jax.Array | None  # [B, N] bool, the patches the pruner kept (None without pruning)
    votes: jax.Array | None  # [B, N] int32, valid rows voting for each patch
    prefix_length: int  # tokens in the cached prefix: kept slots (all patches without pruning) + prompt columns


class Prefix(NamedTuple):
    embs: jax.Array  # [B, L, W]
    mask: jax.Array  # [B, L] bool
    positions: jax.Array  # [B, L] int32


def make_attention_mask(pad_mask: jax.Array, block_starts: jax.Array) -> jax.Array:
    """Bool ``[B, L, L]``: i attends to j when both are valid and j's block does not start after i's (see
    ``pi0_pytorch.make_attention_mask`` for worked patterns)."""
    blocks = jnp.cumsum(block_starts.astype(jnp.int32), axis=1)
    return (blocks[:, None, :] <= blocks[:, :, None]) & pad_mask[:, None, :] & pad_mask[:, :, None]


def sinusoidal_time_embedding(time: jax.Array, dim: int, min_period: float = 4e-3, max_period: float = 4.0):
    """Sine-cosine embedding ``[..., dim]`` of times ``[...]`` (``[B]``, or ``[B, H]`` per action)."""
    fraction = jnp.linspace(0.0, 1.0, dim // 2, dtype=jnp.float32)
    period = min_period * (max_period / min_period) ** fraction
    angles = time.astype(jnp.float32)[..., None] * (2.0 * math.pi / period)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _dense32(x: jax.Array, p: Params) -> jax.Array:
    return x.astype(jnp.float32) @ p["kernel"] + p["bias"]


def embed_inputs(params: Params, config: Pi0Config, obs: JaxObservation) -> PrefixInputs:
    """Image tokens of every camera and the prompt's embeddings, with masks and unpruned-prefix positions."""
    dtype = jnp.dtype(config.dtype)
    images = jnp.concatenate(list(obs.images.values()), axis=0)  # [C*B, H, W, 3]: one vision pass for all cameras
    tokens = siglip.encode_images(params["PaliGemma"]["img"], images, dtype)  # [C*B, P, W]
    batch, num_cameras = obs.batch_size, len(obs.images)
    patches = tokens.reshape(num_cameras, batch, *tokens.shape[1:]).swapaxes(0, 1)  # [B, C, P, W]
    patches = patches.reshape(batch, -1, patches.shape[-1])  # [B, N = C*P, W]
    per_patch = tokens.shape[1]
    patch_mask = jnp.repeat(jnp.stack(list(obs.image_masks.values()), axis=1), per_patch, axis=1)  # [B, N]
    lang = gemma.embed_tokens(params["PaliGemma"]["llm"], obs.tokenized_prompt, dtype)  # [B, T, W]
    lang_mask = obs.tokenized_prompt_mask.astype(bool)
    positions = jnp.cumsum(jnp.concatenate([patch_mask, lang_mask], axis=1).astype(jnp.int32), axis=1) - 1
    n = patches.shape[1]
    return PrefixInputs(patches, patch_mask, positions[:, :n], lang, lang_mask, positions[:, n:])


def prefix_of(inputs: PrefixInputs, patches: tp.PrunedPatches | None) -> Prefix:
    """The prefix the transformer runs: the given (kept) patches, or all of them, then the prompt."""
    if patches is None:
        patches = tp.PrunedPatches(inputs.patches, inputs.patch_mask, inputs.patch_positions, None)
    return Prefix(
        jnp.concatenate([patches.tokens.astype(inputs.lang.dtype), inputs.lang], axis=1),
        jnp.concatenate([patches.mask, inputs.lang_mask], axis=1),
        jnp.concatenate([patches.positions, inputs.lang_positions], axis=1),
    )


def _score(config: Pi0Config, inputs: PrefixInputs) -> tp.Scoring:
    return tp.score(inputs.patches, inputs.lang, inputs.lang_mask, inputs.patch_mask, config.token_prune_center_patches)


def embed_suffix(params: Params, config: Pi0Config, state: jax.Array, x_t: jax.Array, time: jax.Array):
    """(π0: a state token, then) the action tokens; returns tokens, pad mask, block starts and the adaRMS
    conditioning (π0.5) or None (π0)."""
    horizon = x_t.shape[1]
    width = params["action_in_proj"]["kernel"].shape[1]
    time_emb = sinusoidal_time_embedding(time, width)
    action_emb = _dense32(x_t, params["action_in_proj"])  # [B, H, W]
    if config.pi05:
        hidden = jax.nn.swish(_dense32(time_emb, params["time_mlp_in"]))
        cond = jax.nn.swish(_dense32(hidden, params["time_mlp_out"]))
        tokens, starts = action_emb, [True] + [False] * (horizon - 1)
    else:
        state_emb = _dense32(state, params["state_proj"])[:, None]
        per_action = time_emb if time_emb.ndim == 3 else time_emb[:, None]
        action_time = jnp.concatenate([action_emb, jnp.broadcast_to(per_action, action_emb.shape)], axis=-1)
        action_time = _dense32(
            jax.nn.swish(_dense32(action_time, params["action_time_mlp_in"])), params["action_time_mlp_out"]
        )
        tokens, starts, cond = (
            jnp.concatenate([state_emb, action_time], 1),
            [True, True] + [False] * (horizon - 1),
            None,
        )
    pad = jnp.ones(tokens.shape[:2], bool)
    block_starts = jnp.broadcast_to(jnp.asarray(starts)[None], tokens.shape[:2])
    return tokens.astype(jnp.dtype(config.dtype)), pad, block_starts, cond


def _suffix_positions(prefix: Prefix, suffix_pad: jax.Array) -> jax.Array:
    """Suffix positions continue after the last valid prefix position (the unpruned prefix length)."""
    offset = jnp.where(prefix.mask, prefix.positions, -1).max(axis=1, keepdims=True) + 1
    return offset + jnp.cumsum(suffix_pad.astype(jnp.int32), axis=1) - 1


def _velocity(params: Params, config: Pi0Config, suffix_out: jax.Array) -> jax.Array:
    return _dense32(suffix_out[:, -config.action_horizon :], params["action_out_proj"])


def _select_train(
    config: Pi0Config,
    inputs: PrefixInputs,
    scores: jax.Array,
    uniform: jax.Array,
    noise_scale: jax.Array | float,
    prune: PruneSettings,
) -> tuple[tp.PrunedPatches, jax.Array | None, jax.Array, jax.Array | None]:
    """The training selection: the kept patches, their attention-logit gate ``[B, K]``, the noisy votes ``[B, N]``
    and the kept counts ``[B]`` (gate and counts only in budget training; otherwise one row per vote)."""
    common = (inputs.patches, scores, inputs.patch_mask, inputs.patch_positions, uniform, noise_scale)
    if config.token_prune_gate_dropped_sample is not None:
        raise ValueError("token_prune_gate_dropped_sample trains in PyTorch only; set it None to train in JAX")
    if config.token_prune_budget_training:
        selection = tp.select_train_budget(
            *common, prune.keep_tokens, prune.keep_ratio, config.token_prune_gate_dropped_patches
        )
        return selection.kept, selection.gate, selection.choice, selection.kept_counts
    patches, choice = tp.select_train(*common)
    return patches, None, choice, None


@functools.partial(jax.jit, static_argnames=("config", "train", "prune", "remat"))
def compute_loss_fn(
    params: Params,
    obs: JaxObservation,
    actions: jax.Array,
    noise: jax.Array,
    time: jax.Array,
    prune_uniform: jax.Array | None,
    noise_scale: jax.Array | float,
    *,
    config: Pi0Config,
    train: bool,
    prune: PruneSettings,
    remat: bool = False,
    rtc_delay: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-element flow-matching loss ``[B, H, A]`` and the pruning telemetry (empty unless collected).

    ``rtc_delay [B]`` (training-time real-time chunking): the first ``d`` actions are given clean at time 0; leave
    their loss out (:func:`openpi.models_jax.rtc.masked_loss_mean`).

    In training the pruner keeps all N rows (noisy straight-through selection with ``prune_uniform [B, N, N]``),
    or with ``token_prune_budget_training`` the budget's K patches, gated on their attention logits; in eval mode
    it masks the unkept patches (exact, and the shapes stay static).
    """
    actions = actions.astype(jnp.float32)
    t = time.astype(jnp.float32)[:, None, None]
    x_t = t * noise + (1.0 - t) * actions
    if rtc_delay is not None:
        committed = rtc.committed_mask(rtc_delay, actions.shape[1])  # [B, H]
        x_t = jnp.where(committed[..., None], actions, x_t)
        time = jnp.where(committed, 0.0, time.astype(jnp.float32)[:, None])  # [B, H]
    inputs = embed_inputs(params, config, obs)
    patches, patch_bias, stats = None, None, {}
    if prune.enabled:
        scoring = _score(config, inputs)
        if train:
            patches, patch_bias, choice, kept_counts = _select_train(
                config, inputs, scoring.scores, prune_uniform, noise_scale, prune
            )
        else:
            keep, _ = tp.keep_mask(scoring.scores, inputs.patch_mask, prune.keep_tokens, prune.keep_ratio)
            patches = tp.PrunedPatches(inputs.patches, keep, inputs.patch_positions, None)
            choice, kept_counts = None, keep.sum(axis=1)
        if prune.collect_stats:
            stats = tp.telemetry(scoring, inputs.lang_mask, inputs.patch_mask, kept_counts, choice)
    prefix = prefix_of(inputs, patches)
    suffix, suffix_pad, suffix_starts, cond = embed_suffix(params, config, obs.state, x_t, time)
    mask = make_attention_mask(
        jnp.concatenate([prefix.mask, suffix_pad], 1), jnp.concatenate([jnp.zeros_like(prefix.mask), suffix_starts], 1)
    )
    positions = jnp.concatenate([prefix.positions, _suffix_positions(prefix, suffix_pad)], axis=1)
    key_bias = None
    if patch_bias is not None:  # [B, K] on the kept patches; the prompt and suffix keys get none
        key_bias = jnp.pad(patch_bias, ((0, 0), (0, mask.shape[-1] - patch_bias.shape[1])))  # [B, L]
    (_, out), _ = gemma.transformer(
        params["PaliGemma"]["llm"],
        [prefix.embs, suffix],
        mask,
        positions,
        [None, cond],
        key_bias=key_bias,
        remat=remat,
        lora_scales=lora_scales(config),
    )
    return jnp.square(_velocity(params, config, out) - (noise - actions)), stats


@functools.partial(jax.jit, static_argnames=("config", "prune"))
def select_fn(
    params: Params, obs: JaxObservation, *, config: Pi0Config, prune: PruneSettings
) -> tuple[PrefixInputs, jax.Array | None, jax.Array | None, dict[str, jax.Array]]:
    """The embedded prefix inputs, the eval selection ``[B, N]`` and votes ``[B, N]`` (None without pruning), and
    the telemetry."""
    inputs = embed_inputs(params, config, obs)
    if not prune.enabled:
        return inputs, None, None, {}
    scoring = _score(config, inputs)
    keep, votes = tp.keep_mask(scoring.scores, inputs.patch_mask, prune.keep_tokens, prune.keep_ratio)
    stats = tp.telemetry(scoring, inputs.lang_mask, inputs.patch_mask, keep.sum(1), None) if prune.collect_stats else {}
    return inputs, keep, votes, stats


@functools.partial(jax.jit, static_argnames=("config", "slots"))
def prefix_cache_fn(
    params: Params, inputs: PrefixInputs, keep: jax.Array | None, *, config: Pi0Config, slots: int
) -> tuple[Prefix, gemma.KVCache]:
    """The (pruned) prefix, its kept patches gathered into ``slots`` static slots, and its keys/values."""
    kept = None if keep is None else tp.gather_kept(inputs.patches, keep, inputs.patch_positions, slots)
    prefix = prefix_of(inputs, kept)
    _, cache = gemma.transformer(
        params["PaliGemma"]["llm"],
        [prefix.embs, None],
        make_attention_mask(prefix.mask, jnp.zeros_like(prefix.mask)),
        prefix.positions,
        [None, None],
        lora_scales=lora_scales(config),
    )
    return prefix, cache


@functools.partial(jax.jit, static_argnames=("config", "num_steps"))
def denoise_fn(
    params: Params,
    prefix: Prefix,
    cache: gemma.KVCache,
    state: jax.Array,
    noise: jax.Array,
    *,
    config: Pi0Config,
    num_steps: int,
) -> jax.Array:
    """Euler-integrates the flow from ``noise`` (t=1) to actions (t=0), every step attending to the cached prefix."""
    dt = -1.0 / num_steps

    def step(index: jax.Array, x_t: jax.Array) -> jax.Array:
        time = jnp.full((x_t.shape[0],), 1.0 + index * dt, jnp.float32)
        return x_t + dt * _step_velocity(params, config, prefix, cache, state, x_t, time)

    return jax.lax.fori_loop(0, num_steps, step, noise.astype(jnp.float32))


def _step_velocity(
    params: Params, config: Pi0Config, prefix: Prefix, cache: gemma.KVCache, state: jax.Array, x_t, time
) -> jax.Array:
    """The flow ``[B, H, A]`` at ``x_t`` and ``time [B]`` (or per action ``[B, H]``), attending to the cached prefix."""
    suffix, suffix_pad, suffix_starts, cond = embed_suffix(params, config, state, x_t, time)
    prefix_visible = jnp.broadcast_to(prefix.mask[:, None, :], (*suffix_pad.shape, prefix.mask.shape[1]))
    mask = jnp.concatenate([prefix_visible, make_attention_mask(suffix_pad, suffix_starts)], axis=2)
    (_, out), _ = gemma.transformer(
        params["PaliGemma"]["llm"],
        [None, suffix],
        mask,
        _suffix_positions(prefix, suffix_pad),
        [None, cond],
        cache,
        lora_scales=lora_scales(config),
    )
    return _velocity(params, config, out)


class RTCInputs(NamedTuple):
    """Real-time chunking of one sampling call, per sample (static shapes: the previous chunk padded to H)."""

    prev_chunk: jax.Array  # [B, H, A]
    delay: jax.Array  # [B] int
    horizon: jax.Array  # [B] int, >= delay
    trained: jax.Array  # [B] bool, hold the committed prefix clean instead of guiding


@functools.partial(jax.jit, static_argnames=("config", "num_steps"))
def denoise_rtc_fn(
    params: Params,
    prefix: Prefix,
    cache: gemma.KVCache,
    state: jax.Array,
    noise: jax.Array,
    request: RTCInputs,
    *,
    config: Pi0Config,
    num_steps: int,
) -> jax.Array:
    """:func:`denoise_fn` continuing ``request.prev_chunk``: trained samples hold their committed prefix clean at time
    0; guided ones follow the flow minus ``c(t) * J^T (W * (prev - x̂))`` (``x̂ = x_t - t v``, a vector-Jacobian
    product through the step)."""
    rtc_config = config.rtc
    dt, horizon = -1.0 / num_steps, noise.shape[1]
    hold = rtc.committed_mask(jnp.where(request.trained, request.delay, 0), horizon)[..., None]  # [B, H, 1]
    weights = rtc.prefix_weights(request.delay, request.horizon, horizon, rtc_config.prefix_attention_schedule)
    weights = jnp.where(request.trained[:, None], 0.0, weights)[..., None]  # [B, H, 1]

    def step(index: jax.Array, x_t: jax.Array) -> jax.Array:
        t = 1.0 + index * dt
        time = jnp.where(hold[..., 0], 0.0, t)  # [B, H]

        def clean(x: jax.Array) -> tuple[jax.Array, jax.Array]:
            velocity = _step_velocity(params, config, prefix, cache, state, x, time)
            return x - t * velocity, velocity

        estimate, pull_fn, velocity = jax.vjp(clean, x_t, has_aux=True)
        (pull,) = pull_fn((request.prev_chunk - estimate) * weights)
        velocity = velocity - rtc.guidance_weight(t, rtc_config.max_guidance_weight) * pull
        return jnp.where(hold, request.prev_chunk, x_t + dt * velocity)

    start = jnp.where(hold, request.prev_chunk, noise.astype(jnp.float32))
    return jax.lax.fori_loop(0, num_steps, step, start)


def _rtc_inputs(
    config: Pi0Config, shape: tuple[int, int, int], prev_chunk: Any, delay: Any, horizon: Any, mode: Any
) -> RTCInputs | None:
    """The static-shape RTC inputs of a call (None without a previous chunk: plain sampling)."""
    if prev_chunk is None:
        return None
    prev = jnp.asarray(prev_chunk, jnp.float32)
    settings = _rtc.resolve(config.rtc, tuple(prev.shape), shape, delay, horizon, mode)
    prev = jnp.pad(prev, ((0, 0), (0, shape[1] - prev.shape[1]), (0, 0)))
    return RTCInputs(prev, *(jnp.asarray(x) for x in settings))


class TrainingNoise(NamedTuple):
    noise: jax.Array  # [B, H, A] the flow's starting point
    time: jax.Array  # [B] Beta(1.5, 1) * 0.999 + 0.001
    prune_uniform: jax.Array | None  # [B, N, N] the pruner's exploration draw (None without pruning)
    rtc_delay: jax.Array | None = None  # [B] committed prefixes U{0..rtc.training_max_delay} (None: no RTC training)


def draw_training_noise(
    rng: jax.Array, config: Pi0Config, actions_shape: tuple[int, ...], num_cameras: int
) -> TrainingNoise:
    """Every random draw of one training loss evaluation, from ``rng``."""
    noise_rng, time_rng, prune_rng = jax.random.split(rng, 3)
    batch = actions_shape[0]
    noise = jax.random.normal(noise_rng, actions_shape, jnp.float32)
    time = jax.random.beta(time_rng, 1.5, 1.0, (batch,)) * 0.999 + 0.001
    uniform = None
    if config.token_pruning_enabled:
        num_patches = num_cameras * config.vision_config.num_patches
        uniform = jax.random.uniform(prune_rng, (batch, num_patches, num_patches), jnp.float32)
    delay = None
    if config.rtc.training_max_delay > 0:  # a key of its own: the other draws stay those without RTC
        delay_rng = jax.random.fold_in(rng, 1)
        delay = jax.random.randint(delay_rng, (batch,), 0, config.rtc.training_max_delay + 1)
    return TrainingNoise(noise, time, uniform, delay)


def lora_scales(config: Pi0Config | Pi0FastConfig) -> tuple[float, float]:
    """The adapter scale of the language model and of the expert: ``alpha / rank`` (``/ sqrt(rank)`` rank-stabilised),
    1 for a variant without adapters (and for π0-FAST's absent expert)."""

    def scale(gemma: GemmaConfig) -> float:
        if not gemma.lora_rank:
            return 1.0
        return gemma.lora_alpha / (math.sqrt(gemma.lora_rank) if gemma.lora_rslora else gemma.lora_rank)

    return scale(config.llm_config), scale(config.expert_config) if isinstance(config, Pi0Config) else 1.0


class ParamNode(nnx.Module):
    """One node of the parameter tree: sub-nodes and ``nnx.Param`` leaves named as in the checkpoint."""

    def __init__(self, tree: Params):
        for name, value in tree.items():
            setattr(self, name, ParamNode(value) if isinstance(value, dict) else nnx.Param(jnp.asarray(value)))


class Pi0(nnx.Module):
    """π0 (``config.pi05=False``) or π0.5 in JAX, optionally with LightVLA pruning (``token_pruning_enabled``).

    ``keep_tokens`` / ``keep_ratio`` start at the config's budgets and may be changed between calls (each distinct
    budget compiles once); ``collect_stats`` makes the next calls fill ``last_stats`` with the ``prune/*``
    telemetry (python floats).
    """

    def __init__(self, config: Pi0Config, params: Params | None = None, *, seed: int = 0):
        self.config = config
        tree = _params.init_params(config, seed) if params is None else params
        for name, value in tree.items():
            setattr(self, name, ParamNode(value) if isinstance(value, dict) else nnx.Param(jnp.asarray(value)))
        self.keep_tokens = config.token_prune_keep_tokens
        self.keep_ratio = config.token_prune_keep_ratio
        self.collect_stats = False
        self.last_stats: dict[str, float] = {}

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | os.PathLike, config: Pi0Config) -> Pi0:
        """Loads ``<checkpoint>/params`` (the published orbax tree) strictly."""
        return cls(config, _params.load_params(checkpoint_dir, config))

    def params(self) -> Params:
        """The parameters as a nested dict of arrays (the checkpoint tree)."""
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def prune_settings(self) -> PruneSettings:
        return dataclasses.replace(
            PruneSettings.from_config(self.config, collect_stats=self.collect_stats),
            keep_tokens=self.keep_tokens,
            keep_ratio=self.keep_ratio,
        )

    def compute_loss(
        self,
        rng: jax.Array,
        observation: JaxObservation,
        actions: jax.Array,
        *,
        train: bool = False,
        noise: jax.Array | None = None,
        time: jax.Array | None = None,
        prune_uniform: jax.Array | None = None,
        noise_scale: float | None = None,
    ) -> jax.Array:
        """Per-element flow-matching loss ``[B, H, action_dim]`` (upstream averages it over the action dimension).

        ``noise``, ``time`` (``Beta(1.5, 1) * 0.999 + 0.001``) and, in training, the pruner's uniform draw
        ``prune_uniform [B, N, N]`` come from ``rng`` unless given. ``noise_scale`` defaults to the config's.
        """
        obs = observation.trim_prompt_padding(self.config.prompt_trim_multiple)
        drawn = draw_training_noise(rng, self.config, actions.shape, len(obs.images))
        noise = drawn.noise if noise is None else noise
        time = drawn.time if time is None else time
        prune = self.prune_settings()
        prune_uniform = drawn.prune_uniform if prune_uniform is None else prune_uniform
        scale = self.config.token_prune_noise_scale if noise_scale is None else noise_scale
        loss, stats = compute_loss_fn(
            self.params(),
            obs,
            actions,
            noise,
            time,
            prune_uniform if train else None,
            scale,
            config=self.config,
            train=train,
            prune=prune,
        )
        self._record(stats)
        return loss

    def sample_actions(
        self,
        rng: jax.Array,
        observation: JaxObservation,
        *,
        num_steps: int = 10,
        noise: jax.Array | None = None,
        **rtc_kwargs: Any,
    ) -> jax.Array:
        """Actions ``[B, action_horizon, action_dim]`` from ``num_steps`` Euler steps starting at ``noise``; real-time
        chunking with ``prev_chunk``, ``inference_delay``, ``execution_horizon`` and ``rtc_mode`` as in the PyTorch
        model's ``sample_actions``."""
        return self.sample(rng, observation, num_steps=num_steps, noise=noise, **rtc_kwargs).actions

    def sample(
        self,
        rng: jax.Array,
        observation: JaxObservation,
        *,
        num_steps: int = 10,
        noise: jax.Array | None = None,
        prev_chunk: Any = None,
        inference_delay: Any = 0,
        execution_horizon: Any = None,
        rtc_mode: Any = None,
    ) -> Sampled:
        """:meth:`sample_actions`, with the pruner's selection and the cached prefix's length.

        With pruning the selection runs first; the kept patches are gathered into a static number of slots (the
        budget, or the batch's largest union rounded up to ``token_prune_kept_multiple``: one host read), so the
        cached prefix is really shorter.
        """
        obs = observation.trim_prompt_padding(self.config.prompt_trim_multiple)
        config = self.config
        if noise is None:
            noise = jax.random.normal(rng, (obs.batch_size, config.action_horizon, config.action_dim), jnp.float32)
        params = self.params()
        prefix, cache, keep, votes = self._encode_prefix(params, obs)
        shape = (obs.batch_size, config.action_horizon, config.action_dim)
        request = _rtc_inputs(config, shape, prev_chunk, inference_delay, execution_horizon, rtc_mode)
        if request is None:
            actions = denoise_fn(params, prefix, cache, obs.state, noise, config=config, num_steps=num_steps)
        else:
            actions = denoise_rtc_fn(
                params, prefix, cache, obs.state, noise, request, config=config, num_steps=num_steps
            )
        return Sampled(actions, keep, votes, prefix.mask.shape[1])

    def encode_prefix(self, observation: JaxObservation) -> tuple[Prefix, gemma.KVCache]:
        """The prefix :meth:`sample` caches (pruned if enabled) and its keys/values ``[layers, B, L, K, D]``."""
        obs = observation.trim_prompt_padding(self.config.prompt_trim_multiple)
        prefix, cache, _, _ = self._encode_prefix(self.params(), obs)
        return prefix, cache

    def _encode_prefix(self, params: Params, obs: JaxObservation):
        prune = self.prune_settings()
        inputs, keep, votes, stats = select_fn(params, obs, config=self.config, prune=prune)
        slots = inputs.patches.shape[1]
        if keep is not None:
            largest = int(keep.sum(axis=1).max()) if prune.keep_tokens is None and prune.keep_ratio is None else 0
            multiple = self.config.token_prune_kept_multiple
            slots = tp.kept_slots(slots, prune.keep_tokens, prune.keep_ratio, largest, multiple)
        self._record(stats)
        prefix, cache = prefix_cache_fn(params, inputs, keep, config=self.config, slots=slots)
        return prefix, cache, keep, votes

    def _record(self, stats: dict[str, jax.Array]) -> None:
        if self.collect_stats:
            self.last_stats = {key: float(value) for key, value in stats.items()}
