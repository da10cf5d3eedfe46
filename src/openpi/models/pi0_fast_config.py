"""Configuration of π0-FAST: PaliGemma (SigLIP + Gemma) decoding FAST action tokens autoregressively."""

from __future__ import annotations

import dataclasses

from openpi.models import variants
from openpi.models.pi0_config import LORA_FREEZE_PRESET, Dtype


@dataclasses.dataclass(frozen=True)
class Pi0FastConfig:
    """Architecture and decoding of a π0-FAST model (upstream's defaults: ``Pi0FASTConfig``).

    There is no action expert: the language model predicts the action chunk as FAST tokens after the prompt.
    """

    paligemma_variant: str = "gemma_2b"
    vision_variant: str = "So400m/14"
    vocab_size: int = 257_152
    action_dim: int = 32
    action_horizon: int = 32
    # Prompt + state + action tokens (the LIBERO config uses 180).
    max_token_len: int = 250
    dtype: Dtype = "bfloat16"
    # Decoding: at most this many generated tokens; temperature 0 is greedy.
    max_decoding_steps: int = 256
    temperature: float = 0.0
    # The FAST tokenizer folder (tokenizer.json + processor_config.json, e.g. a local copy of the published
    # universal tokenizer, or one from scripts/train_fast_tokenizer.py). None: the data config's default (the embedded
    # datasets bring theirs; the others need it set).
    fast_tokenizer_path: str | None = None
    # LightVLA pruning of the prefix's image tokens at inference (the parameter-free pruner of π0.5; training runs
    # unpruned): keep this many patches in total, or this fraction of the valid ones; neither: the union of the votes.
    # Each decode step then reads a shorter KV cache.
    token_pruning_enabled: bool = False
    token_prune_keep_tokens: int | None = None
    token_prune_keep_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if min(self.action_horizon, self.action_dim, self.max_token_len, self.max_decoding_steps) < 1:
            raise ValueError("action_horizon, action_dim, max_token_len and max_decoding_steps must be positive")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.token_prune_keep_tokens is not None and self.token_prune_keep_tokens < 1:
            raise ValueError(f"token_prune_keep_tokens must be >= 1, got {self.token_prune_keep_tokens}")
        if self.token_prune_keep_ratio is not None and not 0.0 < self.token_prune_keep_ratio <= 1.0:
            raise ValueError(f"token_prune_keep_ratio must be in (0, 1], got {self.token_prune_keep_ratio}")
        self.llm_config  # noqa: B018  (validates the variants)
        self.vision_config  # noqa: B018

    @property
    def llm_config(self) -> variants.GemmaConfig:
        return variants.get_gemma_config(self.paligemma_variant)

    @property
    def vision_config(self) -> variants.SiglipConfig:
        return variants.get_siglip_config(self.vision_variant)

    def get_freeze_filter(self) -> str | None:
        """The ``lora`` freeze preset when the language model has LoRA adapters, else None."""
        return LORA_FREEZE_PRESET if self.llm_config.lora_rank > 0 else None
