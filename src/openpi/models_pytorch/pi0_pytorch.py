"""π0 / π0.5 in PyTorch: a flow-matching action expert conditioned on PaliGemma through shared attention.

Prefix = image tokens of every camera, then language tokens (bidirectional among themselves). Suffix = (π0 only) a
state token, then ``action_horizon`` noisy-action tokens. Training regresses the flow ``noise - actions``; sampling
integrates it with Euler steps from t=1 (noise) to t=0, computing the prefix keys/values once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from time import perf_counter
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from openpi.models.observation import Observation
from openpi.models.pi0_config import Pi0Config
from openpi.models_pytorch import rtc
from openpi.models_pytorch.paligemma_with_expert import KVCache, PaliGemmaWithExpertModel
from openpi.models_pytorch.token_pruner import ImageTokenPruner
from openpi.models_pytorch.weights import keeps_float32

_T = TypeVar("_T")


class EmbeddedPrefix(NamedTuple):
    """The prefix tokens as the transformer takes them."""

    embs: torch.Tensor  # [B, L, W]
    pad_masks: torch.Tensor  # [B, L] bool
    block_starts: torch.Tensor  # [B, L], all zero: the prefix is one bidirectional block
    positions: torch.Tensor  # [B, L] long, rotary positions in the unpruned prefix
    key_bias: torch.Tensor | None = None  # [B, L] float added to the attention logits into each key (the pruner's)


class PrefixCache(NamedTuple):
    """The prefix as the denoising steps see it: per-layer keys/values, validity, positions, the robot state, and
    the prefix's attention-logit bias (None: no bias)."""

    kv_cache: KVCache
    pad_masks: torch.Tensor
    positions: torch.Tensor
    state: torch.Tensor
    key_bias: torch.Tensor | None = None

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.kv_cache for t in kv)


def sinusoidal_time_embedding(
    time: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0
) -> torch.Tensor:
    """Sine-cosine embedding ``[..., dim]`` (float32) of times ``[...]`` (``[B]``, or ``[B, H]`` per action) with
    periods from min_period to max_period."""
    if dim % 2:
        raise ValueError(f"The time embedding dimension must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = time.double()[..., None] * (2.0 * math.pi / period)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def make_attention_mask(pad_masks: torch.Tensor, block_starts: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L, L]``: token i attends to token j if both are valid and j's block does not start after i's.

    ``block_starts [B, L]`` is 1 where a token opens a new block (it and later tokens are hidden from earlier
    ones), 0 where the token joins the current block (bidirectional within it). Worked patterns::

        [0, 0, 0, 0]           one bidirectional block (the prefix: all images and the prompt)
        [0, 0, 1, 1]           prefix-LM: two prefix tokens, then two causal tokens
        prefix + [1, 1, 0, 0]  π0 suffix: the state token (its own block) then the action tokens (one block);
                               the prefix never sees the suffix, the state never sees the actions
        prefix + [1, 0, 0]     π0.5 suffix: the action tokens form one block after the prefix

    Padding (``pad_masks`` False) is never attended to and attends to nothing.
    """
    blocks = torch.cumsum(block_starts.long(), dim=1)  # [B, L] block index of each token
    causal = blocks[:, None, :] <= blocks[:, :, None]  # [B, L(query), L(key)]
    return causal & pad_masks[:, None, :] & pad_masks[:, :, None]


class PI0Pytorch(nn.Module):
    """The π0 (``config.pi05=False``) or π0.5 model, optionally with LightVLA visual-token pruning."""

    def __init__(self, config: Pi0Config):
        super().__init__()
        self.config = config
        self.last_timing_ms: dict[str, float] = {}  # sample_actions' prefix_ms / denoise_ms
        expert_width = config.expert_config.width
        self.paligemma_with_expert = PaliGemmaWithExpertModel(
            config.vision_config, config.llm_config, config.expert_config, config.vocab_size, use_adarms=config.pi05
        )
        self.action_in_proj = nn.Linear(config.action_dim, expert_width)
        self.action_out_proj = nn.Linear(expert_width, config.action_dim)
        if config.pi05:
            self.time_mlp_in = nn.Linear(expert_width, expert_width)
            self.time_mlp_out = nn.Linear(expert_width, expert_width)
        else:
            self.state_proj = nn.Linear(config.action_dim, expert_width)
            self.action_time_mlp_in = nn.Linear(2 * expert_width, expert_width)
            self.action_time_mlp_out = nn.Linear(expert_width, expert_width)
        self.token_pruner = ImageTokenPruner(config) if config.token_pruning_enabled else None
        if config.dtype == "bfloat16":
            self.to_bfloat16()
        if config.pytorch_compile_mode is not None:
            self.compile_sampling(mode=config.pytorch_compile_mode)

    # ----------------------------------------------------------------------------------------------- precision
    def to_bfloat16(self) -> PI0Pytorch:
        """Casts parameters to bfloat16 except those the published checkpoints keep in float32."""
        for name, param in self.named_parameters():
            keep = keeps_float32(name)
            param.data = param.data.to(torch.float32 if keep else torch.bfloat16)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight.dtype

    def gradient_checkpointing_enable(self) -> None:
        self.paligemma_with_expert.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.paligemma_with_expert.gradient_checkpointing = False

    # ---------------------------------------------------------------------------------------- token pruning
    @property
    def token_pruning_enabled(self) -> bool:
        return self.token_pruner is not None

    @property
    def pruner(self) -> ImageTokenPruner:
        """The LightVLA pruner (its budgets, noise and telemetry); raises if pruning is disabled."""
        if self.token_pruner is None:
            raise RuntimeError("Token pruning is disabled; build the model with token_pruning_enabled=True")
        return self.token_pruner

    # Each setter changes one pruner setting between calls; None restores the config's value.
    def set_token_pruner_noise_scale(self, noise_scale: float | None) -> None:
        """Training-time selection noise; None restores ``config.token_prune_noise_scale``."""
        self.pruner.noise_scale = _or(noise_scale, self.config.token_prune_noise_scale)

    def set_token_pruner_keep_tokens(self, keep_tokens: int | None) -> None:
        """Inference budget of K patches in total; None restores ``config.token_prune_keep_tokens``."""
        self.pruner.keep_tokens = _or(keep_tokens, self.config.token_prune_keep_tokens)

    def set_token_pruner_keep_ratio(self, keep_ratio: float | None) -> None:
        """Inference budget as a fraction of valid patches; None restores ``config.token_prune_keep_ratio``."""
        self.pruner.keep_ratio = _or(keep_ratio, self.config.token_prune_keep_ratio)

    def set_token_pruner_collect_stats(self, enabled: bool) -> None:
        """Turns pruning telemetry on for the following forwards (off by default: it costs extra compute)."""
        self.pruner.collect_stats = enabled

    def get_token_pruning_stats(self) -> dict[str, float]:
        """Telemetry of the last forward that collected it, under the ``prune/*`` metric names without the prefix
        (empty when pruning is disabled)."""
        return {} if self.token_pruner is None else self.token_pruner.stats()

    # ------------------------------------------------------------------------------------------------- prefix
    def embed_prefix(
        self,
        images: list[torch.Tensor],
        img_masks: list[torch.Tensor],
        lang_tokens: torch.Tensor,
        lang_masks: torch.Tensor,
        prune_uniform: torch.Tensor | None = None,
    ) -> EmbeddedPrefix:
        """Embeds the prefix (all cameras' patches, pruned if enabled, then the prompt).

        ``prune_uniform [B, N, N]`` replaces the pruner's training noise draw. Positions are those of the unpruned
        prefix (count of valid tokens before a token), so pruned patches leave gaps instead of shifting later tokens.
        The key bias is the pruner's (training: ``log(count)`` of merged duplicate votes, or the straight-through
        gate of budget training).
        """
        pwe = self.paligemma_with_expert
        image_embs = [pwe.embed_image(image) for image in images]  # C x [B, P, W], P patches per camera
        patches = torch.cat(image_embs, dim=1)  # [B, N = C*P, W]
        patch_mask = torch.cat(
            [mask[:, None].expand(-1, emb.shape[1]) for mask, emb in zip(img_masks, image_embs, strict=True)], dim=1
        )  # [B, N]
        lang_embs = pwe.embed_language_tokens(lang_tokens)  # [B, T, W]
        lang_embs = lang_embs * math.sqrt(lang_embs.shape[-1])

        positions = torch.cumsum(torch.cat([patch_mask, lang_masks], dim=1).long(), dim=1) - 1  # [B, N + T]
        patch_positions, lang_positions = positions[:, : patches.shape[1]], positions[:, patches.shape[1] :]
        key_bias = None
        if self.token_pruner is not None:
            pruned = self.token_pruner(patches, lang_embs, lang_masks, patch_mask, patch_positions, prune_uniform)
            patches, patch_mask, patch_positions = pruned.tokens, pruned.mask, pruned.positions  # [B, K, W], [B, K]
            if pruned.key_bias is not None:
                key_bias = F.pad(pruned.key_bias.float(), (0, lang_embs.shape[1]))  # [B, K + T], the prompt unbiased

        embs = torch.cat([patches.to(lang_embs.dtype), lang_embs], dim=1)  # [B, K + T, W]
        pad_masks = torch.cat([patch_mask, lang_masks], dim=1)
        positions = torch.cat([patch_positions, lang_positions], dim=1)
        return EmbeddedPrefix(embs, pad_masks, torch.zeros_like(pad_masks), positions, key_bias)

    # ------------------------------------------------------------------------------------------------- suffix
    def embed_suffix(
        self, state: torch.Tensor, noisy_actions: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Embeds the suffix: (π0) state token + action tokens, at ``timestep [B]`` or per action ``[B, H]`` (real-time
        chunking: the committed prefix is at time 0).

        Returns ``embs``, ``pad_masks``, ``block_starts`` and the adaRMS conditioning (π0.5) or None (π0).
        """
        width = self.action_in_proj.out_features
        time_emb = sinusoidal_time_embedding(timestep, width)
        action_emb = self.action_in_proj(noisy_actions.to(self.action_in_proj.weight.dtype))
        batch, horizon = noisy_actions.shape[:2]
        if self.config.pi05:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_emb))))
            tokens, starts = action_emb, [1] + [0] * (horizon - 1)
        else:
            state_emb = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None]
            per_action = time_emb if time_emb.ndim == 3 else time_emb[:, None].expand(-1, horizon, -1)  # [B, H, W]
            action_time = torch.cat([action_emb, per_action], dim=-1)
            action_time = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(action_time)))
            tokens, starts, cond = torch.cat([state_emb, action_time], dim=1), [1, 1] + [0] * (horizon - 1), None
        device = noisy_actions.device
        pad_masks = torch.ones(batch, tokens.shape[1], dtype=torch.bool, device=device)
        block_starts = torch.tensor(starts, dtype=torch.bool, device=device)[None].expand(batch, -1)
        return tokens.to(self.compute_dtype), pad_masks, block_starts, cond

    # ---------------------------------------------------------------------------------------------- training
    def sample_noise(self, shape: torch.Size | tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        return torch.randn(shape, dtype=torch.float32, device=device)

    def sample_time(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """Flow-matching times ``Beta(1.5, 1) * 0.999 + 0.001``."""
        beta = torch.distributions.Beta(torch.tensor(1.5, device=device), torch.tensor(1.0, device=device))
        return beta.sample((batch_size,)).float() * 0.999 + 0.001

    def forward(
        self,
        observation: Observation,
        actions: torch.Tensor,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        prune_uniform: torch.Tensor | None = None,
        rtc_delay: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-element flow-matching loss ``(v_t - (noise - actions))²``, shape ``[B, H, action_dim]``.

        ``noise``, ``time`` and (training with pruning) the pruner's uniform draw ``prune_uniform [B, N, N]`` are
        sampled unless given. ``rtc_delay [B]`` (training-time real-time chunking): the first ``d`` actions of each
        example are given clean at time 0; their loss carries no signal, leave it out
        (:func:`openpi.models_pytorch.rtc.masked_loss_mean`)."""
        images, img_masks, tokens, token_masks, state = self._unpack(observation)
        actions = actions.float()
        noise = self.sample_noise(actions.shape, actions.device) if noise is None else noise.float()
        time = self.sample_time(actions.shape[0], actions.device) if time is None else time.float()
        t = time[:, None, None]
        x_t = t * noise + (1.0 - t) * actions
        if rtc_delay is not None:
            committed = rtc.committed_mask(rtc_delay.to(actions.device), actions.shape[1])  # [B, H]
            x_t = torch.where(committed[..., None], actions, x_t)
            time = torch.where(committed, torch.zeros_like(committed, dtype=time.dtype), time[:, None])  # [B, H]

        prefix = self.embed_prefix(images, img_masks, tokens, token_masks, prune_uniform)
        self._record_prefix_length(prefix.embs.shape[1])
        suffix_embs, suffix_pad, suffix_starts, cond = self.embed_suffix(state, x_t, time)
        mask = make_attention_mask(
            torch.cat([prefix.pad_masks, suffix_pad], 1), torch.cat([prefix.block_starts, suffix_starts], 1)
        )
        suffix_pos = _suffix_positions(prefix.positions, prefix.pad_masks, suffix_pad)
        (_, suffix_out), _ = self.paligemma_with_expert(
            [prefix.embs, suffix_embs],
            mask,
            torch.cat([prefix.positions, suffix_pos], dim=1),
            [None, cond],
            key_bias=_append_unbiased_keys(prefix.key_bias, suffix_embs.shape[1]),
        )
        v_t = self.action_out_proj(suffix_out[:, -self.config.action_horizon :].to(self.action_out_proj.weight.dtype))
        return F.mse_loss(v_t.float(), noise - actions, reduction="none")

    # ---------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_actions(
        self,
        *args: torch.device | str | Observation,
        noise: torch.Tensor | None = None,
        num_steps: int = 10,
        prev_chunk: torch.Tensor | None = None,
        inference_delay: int | Sequence[int] | torch.Tensor = 0,
        execution_horizon: int | Sequence[int] | torch.Tensor | None = None,
        rtc_mode: str | Sequence[str] | None = None,
    ) -> torch.Tensor:
        """``sample_actions(observation, noise=None, num_steps=10)``: actions ``[B, H, action_dim]``.

        Integrates the flow from noise (t=1) to actions (t=0) with ``num_steps`` Euler steps; the prefix is embedded
        (and pruned) once and its keys/values cached for every step. Runs on the observation's device. The upstream
        spelling ``sample_actions(device, observation, noise, num_steps)`` is accepted too. Afterwards
        ``last_timing_ms`` holds the wall time of the prefix (``prefix_ms``) and of the denoising loop
        (``denoise_ms``).

        Real-time chunking (docs/rtc.md): ``prev_chunk [B, L, action_dim]`` (L <= H) is the previous chunk from this
        observation's step on; ``inference_delay`` (d) of its actions run before this chunk arrives and
        ``execution_horizon`` (s) bounds the overlap; ``rtc_mode`` "guided" or "trained". Each is one value or one
        per sample (see :func:`openpi.models_pytorch.rtc.make_request`). Without ``prev_chunk``: plain sampling.
        """
        observation, noise, num_steps = _sample_actions_args(args, noise, num_steps)
        shape = (observation.state.shape[0], self.config.action_horizon, self.config.action_dim)
        device = observation.state.device
        request = rtc.make_request(
            self.config.rtc, shape, prev_chunk, inference_delay, execution_horizon, rtc_mode, device
        )
        x_t = self.sample_noise(shape, device) if noise is None else noise.float().to(device)  # [B, H, A]
        start = perf_counter()
        prefix = self.encode_prefix(observation)
        prefix_done = _synchronized(device)
        if request is None:
            actions = self.denoise(prefix, x_t, num_steps)
        else:
            actions = self.denoise_rtc(prefix, x_t, num_steps, request)
        end = _synchronized(device)
        self.last_timing_ms = {"prefix_ms": (prefix_done - start) * 1e3, "denoise_ms": (end - prefix_done) * 1e3}
        return actions

    def denoise(self, prefix: PrefixCache, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Euler-integrates the flow from ``noise [B, H, A]`` (t=1) to actions (t=0) in ``num_steps`` steps, every
        step attending to the cached prefix."""
        x_t, dt = noise, -1.0 / num_steps
        for step in range(num_steps):
            time = torch.full((x_t.shape[0],), 1.0 + step * dt, dtype=torch.float32, device=x_t.device)
            x_t = x_t + dt * self.denoise_step(prefix, x_t, time)
        return x_t

    def denoise_rtc(
        self, prefix: PrefixCache, noise: torch.Tensor, num_steps: int, request: rtc.RTCRequest
    ) -> torch.Tensor:
        """:meth:`denoise` continuing ``request.prev_chunk`` (eager: the guidance differentiates through the step).

        Trained samples hold their committed prefix clean (at time 0) at every step. Guided samples follow the flow
        plus ``c(t) * J^T (W * (prev - x̂))``, where ``x̂ = x_t - t v`` is the clean estimate, ``J`` its Jacobian in
        ``x_t`` (a vector-Jacobian product through the denoiser), ``W`` the prefix weights and ``c(t)`` the clipped
        guidance weight."""
        config = self.config.rtc
        horizon = noise.shape[1]
        hold = rtc.committed_mask(torch.where(request.trained, request.delay, 0), horizon)  # [B, H]
        weights = rtc.prefix_weights(request.delay, request.horizon, horizon, config.prefix_attention_schedule)
        weights = torch.where(request.trained[:, None], torch.zeros_like(weights), weights)[..., None]  # [B, H, 1]
        guided = bool((weights > 0).any())
        x_t, dt = torch.where(hold[..., None], request.prev_chunk, noise), -1.0 / num_steps
        for step in range(num_steps):
            t = 1.0 + step * dt
            time = torch.where(hold, 0.0, torch.full(hold.shape, t, device=x_t.device))  # [B, H]
            if not guided:
                velocity = self.denoise_step(prefix, x_t, time)
            else:
                with torch.enable_grad():
                    x_in = x_t.detach().requires_grad_(True)
                    velocity = self.denoise_step(prefix, x_in, time)
                    clean = x_in - t * velocity  # [B, H, A]
                    error = (request.prev_chunk - clean) * weights
                    (pull,) = torch.autograd.grad(clean, x_in, error)
                velocity = velocity.detach() - rtc.guidance_weight(t, config.max_guidance_weight) * pull
            x_t = torch.where(hold[..., None], request.prev_chunk, x_t + dt * velocity)
        return x_t

    def compile_sampling(self, **compile_options: Any) -> None:
        """Wraps the two parts of :meth:`sample_actions`, :meth:`encode_prefix` and :meth:`denoise`, in
        ``torch.compile`` (the timing between them stays eager, so it neither breaks nor guards the graphs)."""
        self.encode_prefix = torch.compile(self.encode_prefix, **compile_options)
        self.denoise = torch.compile(self.denoise, **compile_options)

    def encode_prefix(self, observation: Observation) -> PrefixCache:
        """Embeds (and, if enabled, prunes) the prefix and runs the language model over it once."""
        images, img_masks, tokens, token_masks, state = self._unpack(observation)
        prefix = self.embed_prefix(images, img_masks, tokens, token_masks)
        prefix_mask = make_attention_mask(prefix.pad_masks, prefix.block_starts)
        _, kv_cache = self.paligemma_with_expert(
            [prefix.embs, None], prefix_mask, prefix.positions, [None, None], key_bias=prefix.key_bias
        )
        return PrefixCache(kv_cache, prefix.pad_masks, prefix.positions, state, prefix.key_bias)

    def denoise_step(self, prefix: PrefixCache, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """The predicted flow ``v_t [B, H, action_dim]`` at ``x_t [B, H, action_dim]`` and ``time [B]`` (or per action
        ``[B, H]``), attending to the cached prefix."""
        suffix_embs, suffix_pad, suffix_starts, cond = self.embed_suffix(prefix.state, x_t, time)  # [B, S, W]
        suffix_mask = make_attention_mask(suffix_pad, suffix_starts)  # [B, S, S]
        prefix_visible = prefix.pad_masks[:, None, :].expand(-1, suffix_embs.shape[1], -1)  # [B, S, L]
        mask = torch.cat([prefix_visible, suffix_mask], dim=2)  # [B, S, L + S]
        positions = _suffix_positions(prefix.positions, prefix.pad_masks, suffix_pad)
        key_bias = _append_unbiased_keys(prefix.key_bias, suffix_embs.shape[1])
        (_, out), _ = self.paligemma_with_expert(
            [None, suffix_embs], mask, positions, [None, cond], prefix.kv_cache, key_bias=key_bias
        )
        return self.action_out_proj(out[:, -self.config.action_horizon :].to(self.action_out_proj.weight.dtype)).float()

    def _record_prefix_length(self, length: int) -> None:
        """Adds the prefix length the transformer runs to the telemetry (``prune/train_prefix_tokens_mean``)."""
        if self.token_pruner is not None and self.token_pruner.last_stats is not None:
            self.token_pruner.last_stats["train_prefix_tokens_mean"] = float(length)

    # ------------------------------------------------------------------------------------------------ inputs
    def _unpack(self, observation: Observation):
        if observation.tokenized_prompt is None:
            raise ValueError("The observation has no tokenized_prompt; run the TokenizePrompt transform first")
        images = [image.float() for image in observation.images.values()]
        img_masks = [observation.image_masks[name].bool() for name in observation.images]
        state = observation.state.float()
        if state.shape[-1] != self.config.action_dim:
            raise ValueError(f"State must be padded to action_dim={self.config.action_dim}, got {state.shape[-1]}")
        tokens, token_masks = trim_prompt_padding(
            observation.tokenized_prompt, observation.tokenized_prompt_mask.bool(), self.config.prompt_trim_multiple
        )
        return images, img_masks, tokens, token_masks, state


def trim_prompt_padding(
    tokens: torch.Tensor, masks: torch.Tensor, multiple: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cuts the columns of ``tokens``/``masks [B, L]`` after the last valid token of any sample, keeping a multiple
    of ``multiple`` (bounded shapes for compiled graphs); ``multiple=None`` keeps every column.

    Exact: the cut columns are padding in every sample, padding is never attended to, and positions count valid
    tokens only.
    """
    if multiple is None or tokens.shape[1] == 0:
        return tokens, masks
    last_valid = (masks * torch.arange(1, masks.shape[1] + 1, device=masks.device)).amax()  # 0 if none valid
    # Rounded before it becomes a Python int, so a compiled model is specialised on the multiple, not the length.
    keep = int(((last_valid + multiple - 1) // multiple * multiple).clamp(min=multiple, max=masks.shape[1]))
    return tokens[:, :keep], masks[:, :keep]


def _append_unbiased_keys(key_bias: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """``[B, L]`` key bias -> ``[B, L + length]``, the appended keys unbiased (None stays None)."""
    return None if key_bias is None else F.pad(key_bias, (0, length))


def _suffix_positions(prefix_pos: torch.Tensor, prefix_pad: torch.Tensor, suffix_pad: torch.Tensor) -> torch.Tensor:
    """Suffix positions continue after the last valid prefix position (the unpruned prefix length)."""
    offset = prefix_pos.masked_fill(~prefix_pad, -1).amax(dim=1, keepdim=True) + 1
    return offset + torch.cumsum(suffix_pad.long(), dim=1) - 1


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _synchronized(device: torch.device) -> float:
    """``perf_counter()`` once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return perf_counter()


def _sample_actions_args(
    args: tuple, noise: torch.Tensor | None, num_steps: int
) -> tuple[Observation, torch.Tensor | None, int]:
    """Accepts ``(observation)`` and the upstream ``(device, observation[, noise[, num_steps]])``."""
    if args and isinstance(args[0], str | torch.device):
        args = args[1:]  # the device: the observation already says where to run
    if not args or not isinstance(args[0], Observation) or len(args) > 3:
        raise TypeError("sample_actions takes an Observation (optionally after a device, as upstream)")
    observation, *rest = args
    if rest:
        noise = rest[0]
    if len(rest) > 1:
        num_steps = rest[1]
    return observation, noise, num_steps
