"""Configuration of the π0 / π0.5 model."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from openpi.models import variants

Dtype = Literal["float32", "bfloat16"]
# How the previous chunk's prefix is weighted between the frozen first d actions and the execution horizon s.
RTCSchedule = Literal["linear", "exp", "ones", "zeros"]
RTC_SCHEDULES: tuple[str, ...] = typing.get_args(RTCSchedule)
# Inference modes of real-time chunking: "guided" works with any flow model, "trained" needs rtc.training_max_delay.
RTCMode = Literal["guided", "trained"]
RTC_MODES: tuple[str, ...] = typing.get_args(RTCMode)
# The trainers' freeze preset that freezes the base weights of each Gemma with LoRA (openpi.training.freezing).
LORA_FREEZE_PRESET = "lora"


@dataclasses.dataclass(frozen=True)
class RTCConfig:
    """Real-time chunking (docs/rtc.md): the next chunk continues the actions of the previous one that will have run.

    Guided (inference only, any flow model): the first ``d`` actions (the inference delay) are pulled onto the
    previous chunk's and the rest of the overlap, up to the execution horizon, with weights that decay by
    ``prefix_attention_schedule``; the pull is a guidance term on the flow, its weight clipped at
    ``max_guidance_weight``. Trained: with ``training_max_delay > 0`` the model is trained with a committed prefix of
    ``d ~ U{0..training_max_delay}`` clean actions left out of the loss, and inference holds the prefix clean.
    """

    training_max_delay: int = 0
    """Training-time RTC: the largest committed prefix drawn per example (0: the model is trained without it)."""
    max_guidance_weight: float = 10.0
    """Guided RTC: the clip on the guidance weight."""
    prefix_attention_schedule: RTCSchedule = "exp"
    """Guided RTC: the decay of the prefix weights from the delay d to the execution horizon."""
    execution_horizon: int | None = None
    """Default execution horizon s (the weights reach 0 at action s); None: the whole overlap with the previous
    chunk."""

    def __post_init__(self) -> None:
        if self.prefix_attention_schedule not in RTC_SCHEDULES:
            raise ValueError(
                f"prefix_attention_schedule must be one of {RTC_SCHEDULES}, got {self.prefix_attention_schedule!r}"
            )
        if self.training_max_delay < 0 or self.max_guidance_weight < 0:
            raise ValueError(
                "rtc.training_max_delay and rtc.max_guidance_weight must be >= 0, got "
                f"{self.training_max_delay}, {self.max_guidance_weight}"
            )
        if self.execution_horizon is not None and self.execution_horizon < 1:
            raise ValueError(f"rtc.execution_horizon must be >= 1, got {self.execution_horizon}")

    @property
    def modes(self) -> tuple[str, ...]:
        """The RTC modes a model with this config serves."""
        return RTC_MODES if self.training_max_delay > 0 else ("guided",)


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """Architecture and behaviour of a π0 (``pi05=False``) or π0.5 (``pi05=True``) model.

    Variants are registered names (see :mod:`openpi.models.variants`) or explicit ``field=value,...`` strings.
    """

    pi05: bool = False
    """π0.5 (adaRMS time conditioning, state in the prompt) instead of π0 (state token in the suffix)."""
    paligemma_variant: str = "gemma_2b"
    """Gemma variant of the vision-language model (e.g. gemma_2b, gemma_2b_lora, dummy)."""
    action_expert_variant: str = "gemma_300m"
    """Gemma variant of the action expert (e.g. gemma_300m, gemma_300m_lora, dummy)."""
    vision_variant: str = "So400m/14"
    """SigLIP variant of the vision tower; it fixes the image size (e.g. So400m/14: 224 px, 256 patches)."""
    vocab_size: int = 257_152
    """Token vocabulary of the language model (the PaliGemma tokenizer's 257,152)."""
    action_dim: int = 32
    """Model action and state width; each robot's actions and state are zero-padded to it."""
    action_horizon: int = 50
    """Actions per predicted chunk."""
    max_token_len: int | None = None
    """Number of prompt tokens; None means 200 for π0.5 and 48 for π0."""
    dtype: Dtype = "bfloat16"
    """Weight precision of the model at inference."""
    discrete_state_input: bool | None = None
    """π0.5 writes the discretised state into the prompt; None means "on for π0.5, off for π0"."""
    pytorch_compile_mode: str | None = None
    """When set, `sample_actions` is wrapped in `torch.compile` with this mode (e.g. "max-autotune", "default")."""
    prompt_trim_multiple: int | None = 16
    """Cut the prompt's right-padding to the batch's longest valid prompt, rounded up to this multiple (exact; π0.5 pads
    prompts to 200 tokens). None runs every padded token through the model."""

    token_pruning_enabled: bool = False
    """LightVLA visual-token pruning: score the image patches against the prompt, keep the chosen ones
    (docs/lightvla_pruning.md)."""
    token_prune_noise_scale: float = 1.0
    """Scale of the uniform noise added to the pruner's scores in training (its exploration; decays to 0)."""
    token_prune_keep_tokens: int | None = None
    """Inference budget as a count: keep this many patches in total (it wins over --model.token-prune-keep-ratio;
    neither: LightVLA's union of every patch's vote). With budget training the forward trains on it too."""
    token_prune_keep_ratio: float | None = None
    """Inference budget as a fraction in (0, 1]: keep this share of the valid patches, rounded up (unless
    --model.token-prune-keep-tokens is set). With budget training the forward trains on it too."""
    token_prune_kept_multiple: int | None = None
    """At inference, pad the kept patch count up to a multiple of this (the padding rows are masked: exact), so that a
    compiled model meets a few prefix lengths instead of one per kept count. None: no padding."""
    token_prune_center_patches: bool = True
    """Score with mean-centred patches: without it the patches' shared direction makes every patch vote alike and the
    selection collapses to a few patches. False is LightVLA's original scoring."""
    token_prune_dedup_training: bool = True
    """Union selection in training: run the prefix on the distinct voted patches (each once, its attention logit raised
    by the log of its vote count) instead of one row per vote; the same loss and gradients, a shorter prefix."""
    token_prune_budget_training: bool = False
    """Train on the patches the inference budget keeps, ranked from the noisy votes, with a straight-through gate of
    their soft votes on their attention logits, instead of one row per noisy vote: train and serve see the same patches.
    Needs a budget."""
    token_prune_gate_dropped_patches: bool = False
    """With budget training, keep the dropped patches in the training prefix at a negligible attention weight, so that
    the gate's gradient reaches them too; the forward is the budget's, the training prefix the unpruned length."""
    token_prune_gate_dropped_sample: float | None = None
    """With --model.token-prune-gate-dropped-patches, gate only this share of the dropped patches per sample and
    training step, drawn uniformly, their gate's gradient divided by the share (an unbiased estimate of gating them
    all): the training prefix holds the budget plus this share of the dropped patches. None: gate them all."""

    rtc: RTCConfig = dataclasses.field(default_factory=RTCConfig)
    """Real-time chunking (docs/rtc.md): guided RTC's settings and training-time RTC (off by default)."""

    def __post_init__(self) -> None:
        if self.max_token_len is None:
            object.__setattr__(self, "max_token_len", 200 if self.pi05 else 48)
        if self.discrete_state_input is None:
            object.__setattr__(self, "discrete_state_input", self.pi05)
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.action_horizon < 1 or self.action_dim < 1:
            raise ValueError(
                f"action_horizon and action_dim must be positive, got {self.action_horizon}, {self.action_dim}"
            )
        llm, expert = self.llm_config, self.expert_config
        shared = ("depth", "num_heads", "num_kv_heads", "head_dim")
        mismatched = [f for f in shared if getattr(llm, f) != getattr(expert, f)]
        if mismatched:
            raise ValueError(f"The language model and the action expert share attention; they differ in {mismatched}")
        self.vision_config  # noqa: B018  (validates the variant)
        if self.rtc.training_max_delay >= self.action_horizon:
            raise ValueError(
                f"rtc.training_max_delay ({self.rtc.training_max_delay}) must be below action_horizon "
                f"({self.action_horizon}): some actions must stay to learn"
            )
        if self.token_prune_keep_tokens is not None and self.token_prune_keep_tokens < 1:
            raise ValueError(f"token_prune_keep_tokens must be >= 1, got {self.token_prune_keep_tokens}")
        if self.token_prune_keep_ratio is not None and not 0.0 < self.token_prune_keep_ratio <= 1.0:
            raise ValueError(f"token_prune_keep_ratio must be in (0, 1], got {self.token_prune_keep_ratio}")
        no_budget = self.token_prune_keep_ratio is None and self.token_prune_keep_tokens is None
        if self.token_pruning_enabled and self.token_prune_budget_training and no_budget:
            raise ValueError(
                "token_prune_budget_training trains on the inference budget: set token_prune_keep_ratio or "
                "token_prune_keep_tokens, or token_prune_budget_training False for LightVLA's union selection"
            )
        if (
            self.token_pruning_enabled
            and self.token_prune_gate_dropped_patches
            and not self.token_prune_budget_training
        ):
            raise ValueError(
                "token_prune_gate_dropped_patches gates the budget's dropped patches: it needs "
                "token_prune_budget_training (for LightVLA's union selection set token_prune_gate_dropped_patches "
                "False too)"
            )
        sample = self.token_prune_gate_dropped_sample
        if sample is not None and not 0.0 < sample <= 1.0:
            raise ValueError(f"token_prune_gate_dropped_sample must be in (0, 1] or None, got {sample}")
        if self.token_pruning_enabled and sample is not None and not self.token_prune_gate_dropped_patches:
            raise ValueError(
                "token_prune_gate_dropped_sample samples the gated dropped patches: it needs "
                "token_prune_gate_dropped_patches True"
            )

    def get_freeze_filter(self) -> str | None:
        """Upstream's freeze filter for LoRA fine-tuning: the ``lora`` preset (the base weights of each Gemma with
        LoRA frozen, its LoRA factors trained) when either Gemma has LoRA, else None (nothing frozen)."""
        has_lora = self.llm_config.lora_rank > 0 or self.expert_config.lora_rank > 0
        return LORA_FREEZE_PRESET if has_lora else None

    @property
    def llm_config(self) -> variants.GemmaConfig:
        return variants.get_gemma_config(self.paligemma_variant)

    @property
    def expert_config(self) -> variants.GemmaConfig:
        return variants.get_gemma_config(self.action_expert_variant)

    @property
    def vision_config(self) -> variants.SiglipConfig:
        return variants.get_siglip_config(self.vision_variant)


def tiny_config(**overrides: Any) -> Pi0Config:
    """The tiny π0.5 used by the debug configs, tests, benchmarks and demos: the ``dummy`` Gemma for both experts,
    the ``tiny`` SigLIP (224 px), a 1024-token vocabulary, float32. ``overrides`` replace any field."""
    fields: dict[str, Any] = {
        "pi05": True,
        "paligemma_variant": "dummy",
        "action_expert_variant": "dummy",
        "vision_variant": "tiny",
        "vocab_size": 1024,
        "dtype": "float32",
    }
    return Pi0Config(**{**fields, **overrides})


def mid_config(**overrides: Any) -> Pi0Config:
    """A mid-size π0.5 for CPU benchmarks (≈ 1/6 of the full width): Gemma width 512 × 8 layers, expert width 256 ×
    8 layers, SigLIP width 384 × 6 layers (224 px), a 4096-token vocabulary, float32."""
    fields: dict[str, Any] = {
        "pi05": True,
        "paligemma_variant": "width=512,depth=8,mlp_dim=2048,num_heads=8,num_kv_heads=1,head_dim=64",
        "action_expert_variant": "width=256,depth=8,mlp_dim=1024,num_heads=8,num_kv_heads=1,head_dim=64",
        "vision_variant": "hidden_size=384,num_hidden_layers=6,num_attention_heads=6,intermediate_size=1536",
        "vocab_size": 4096,
        "dtype": "float32",
    }
    return Pi0Config(**{**fields, **overrides})
