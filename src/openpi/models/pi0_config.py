"""Configuration of the π0 / π0.5 model."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from openpi.models import variants

Dtype = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """Architecture and behaviour of a π0 (``pi05=False``) or π0.5 (``pi05=True``) model.

    Variants are registered names (see :mod:`openpi.models.variants`) or explicit ``field=value,...`` strings.
    """

    pi05: bool = False
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    vision_variant: str = "So400m/14"
    vocab_size: int = 257_152
    action_dim: int = 32
    action_horizon: int = 50
    # Number of prompt tokens; None means 200 for π0.5 and 48 for π0.
    max_token_len: int | None = None
    dtype: Dtype = "bfloat16"
    # π0.5 writes the discretised state into the prompt; None means "on for π0.5, off for π0".
    discrete_state_input: bool | None = None
    # When set, `sample_actions` is wrapped in `torch.compile` with this mode (e.g. "max-autotune", "default").
    pytorch_compile_mode: str | None = None
    # Cut the prompt's right-padding to the batch's longest valid prompt, rounded up to this multiple (exact; π0.5
    # pads prompts to 200 tokens). None runs every padded token through the model.
    prompt_trim_multiple: int | None = 16

    # LightVLA visual-token pruning (see docs/lightvla_pruning.md).
    token_pruning_enabled: bool = False
    token_prune_noise_scale: float = 1.0
    token_prune_keep_tokens: int | None = None
    token_prune_keep_ratio: float | None = None
    # At inference, pad the kept patch count up to a multiple of this (the padding rows are masked: exact), so that a
    # compiled model meets a few prefix lengths instead of one per kept count. None: no padding.
    token_prune_kept_multiple: int | None = None
    # In training, run the prefix on the distinct voted patches (each once, its attention logit raised by log of its
    # vote count) instead of one row per vote: the same loss and gradients, a shorter prefix (docs/lightvla_pruning.md).
    token_prune_dedup_training: bool = True
    # Score with mean-centred patches: prevents the collapse to a few patches (docs/lightvla_pruning.md). False is
    # the original LightVLA scoring.
    token_prune_center_patches: bool = True
    # The soft (gradient) part of the straight-through weights from the noisy scores, as LightVLA's released code
    # does; False uses the noise-free scores (docs/lightvla_pruning.md).
    token_prune_noisy_softmax: bool = False
    # The seeds' proposals, as ablations: the pruner also sees a projected state token ("plan 1"), or the projected
    # noisy actions of the flow-matching step in training and the sampling's starting noise at inference ("plan B").
    # Each adds one Linear(action_dim -> width) that only the pruner uses.
    token_prune_state_token: bool = False
    token_prune_action_context: bool = False
    # Train on the patches the inference budget (token_prune_keep_ratio / _keep_tokens) keeps, ranked from the noisy
    # votes, with a straight-through gate on their attention logits, instead of one row per noisy vote: train and
    # serve see the same count (a departure from LightVLA; docs/lightvla_pruning.md).
    token_prune_budget_training: bool = False
    # Under a budget, rank the patches by their soft votes (sum over valid rows of softmax(S), of the noisy scores in
    # training) instead of hard votes then best score: the quantity budget training's gate trains (an ablation).
    token_prune_rank_by_soft_votes: bool = False
    # With budget training, keep every patch in the training prefix, the dropped ones at a 1e-12 attention weight, so
    # the gate's gradient also reaches the patches the budget dropped (what letting each back in would change); the
    # forward is the budget's, the training prefix the unpruned length (the *_lightvla default since 2026-12-03;
    # docs/lightvla_pruning.md).
    token_prune_gate_dropped_patches: bool = False
    # Score with the cosine of queries and patches over this temperature instead of Q P^T / sqrt(width), whose scale
    # grows with the width: the same scale against the training noise and the same softmax sharpness at any width
    # (an ablation; the eval selection does not depend on it; docs/lightvla_pruning.md). None: LightVLA's scale.
    token_prune_score_temperature: float | None = None
    # Under a budget, keep the neighbourhoods (this radius, in patches) of the top-ranked patches instead of those
    # patches alone: an object's patches are contiguous, and one it only grazes scores like the background (a
    # departure from LightVLA, docs/lightvla_pruning.md). 0: off.
    token_prune_keep_neighbours: int = 0
    # Give the pruner one learned width x width map of its queries, initialised to the identity (LightVLA's scores at
    # the start), so the scorer learns through parameters of its own instead of only through the patch and prompt
    # embeddings the policy shares (a departure from LightVLA, whose pruner has no parameters;
    # docs/lightvla_pruning.md). A checkpoint without the map (an unpruned base) loads with the identity.
    token_prune_query_projection: bool = False

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
        if self.token_prune_keep_tokens is not None and self.token_prune_keep_tokens < 1:
            raise ValueError(f"token_prune_keep_tokens must be >= 1, got {self.token_prune_keep_tokens}")
        pruner_parameters = (
            self.token_prune_state_token or self.token_prune_action_context or self.token_prune_query_projection
        )
        if pruner_parameters and not self.token_pruning_enabled:
            raise ValueError(
                "token_prune_state_token / token_prune_action_context / token_prune_query_projection need "
                "token_pruning_enabled"
            )
        if self.token_prune_keep_ratio is not None and not 0.0 < self.token_prune_keep_ratio <= 1.0:
            raise ValueError(f"token_prune_keep_ratio must be in (0, 1], got {self.token_prune_keep_ratio}")
        temperature = self.token_prune_score_temperature
        if temperature is not None and not 0.0 < temperature < math.inf:
            raise ValueError(f"token_prune_score_temperature must be None or a finite number > 0, got {temperature}")
        if self.token_prune_keep_neighbours < 0:
            raise ValueError(f"token_prune_keep_neighbours must be >= 0, got {self.token_prune_keep_neighbours}")
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
