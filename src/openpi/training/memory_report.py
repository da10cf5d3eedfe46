"""The memory a config's fine-tuning needs per mode (``scripts/estimate_memory.py``): the config as it is, LoRA and
frozen vision, each with gradient checkpointing off and on, as a Markdown table of ``openpi.training.memory``'s
estimates."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from openpi.models import variants
from openpi.models.pi0_config import Pi0Config
from openpi.training import config as _config
from openpi.training import memory

GIB = 2**30
LORA_VARIANTS = {"gemma_2b": "gemma_2b_lora", "gemma_300m": "gemma_300m_lora"}


def modes(config: _config.TrainConfig) -> dict[str, _config.TrainConfig]:
    """The config as it is, with LoRA (the ``*_lora`` Gemma variants, rank-16 adapters on other sizes, with the
    model's LoRA freeze filter and no EMA, as the low-memory configs), and with the vision tower frozen; each with
    checkpointing off and on."""
    model = config.model
    lora_model = dataclasses.replace(model, paligemma_variant=_with_lora(model.paligemma_variant))
    if isinstance(model, Pi0Config):
        lora_model = dataclasses.replace(lora_model, action_expert_variant=_with_lora(model.action_expert_variant))
    modes = {
        "as configured": config,
        "lora": dataclasses.replace(
            config, model=lora_model, freeze_filter=lora_model.get_freeze_filter(), ema_decay=None
        ),
        "frozen vision": dataclasses.replace(config, freeze_filter="vision"),
    }
    return {
        f"{name}, checkpointing {'on' if on else 'off'}": dataclasses.replace(mode, gradient_checkpointing=on)
        for name, mode in modes.items()
        for on in (False, True)
    }


def _with_lora(variant: str) -> str:
    """The published ``*_lora`` counterpart of a named Gemma, else the variant with rank-16 adapters."""
    if variant in LORA_VARIANTS:
        return LORA_VARIANTS[variant]
    gemma = variants.get_gemma_config(variant)
    return (
        variant if gemma.lora_rank else variants.spell_variant(dataclasses.replace(gemma, lora_rank=16, lora_alpha=16))
    )


def report(
    config: _config.TrainConfig,
    *,
    batch_size: int | None = None,
    prompt_tokens: int | None = None,
    fsdp_devices: Sequence[int] = (1,),
) -> str:
    """A title line and a table with one row per mode and FSDP rank count, in GiB per rank; ``batch_size`` (samples
    per rank) and ``prompt_tokens`` default to the config's."""
    batch = batch_size or config.batch_size
    lines = [
        f"{config.name}: {config.pytorch_training_precision} weights, EMA {config.ema_decay}, batch {batch} per rank, "
        f"{prompt_tokens or config.model.max_token_len} prompt tokens (GiB per rank)",
        "| mode | FSDP ranks | trainable params | weights | grads | optimizer | EMA | batch | activations | total |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, variant in modes(config).items():
        for ranks in fsdp_devices:
            e = memory.estimate(variant, batch_size=batch, prompt_tokens=prompt_tokens, fsdp_devices=ranks)
            parts = (
                e.weight_bytes,
                e.gradient_bytes,
                e.optimizer_bytes,
                e.ema_bytes,
                e.batch_bytes,
                e.activation_bytes,
            )
            lines.append(
                f"| {name} | {ranks} | {e.trainable_parameters / 1e9:.2f} B | "
                + " | ".join(f"{b / GIB:.1f}" for b in parts)
                + f" | {e.total_bytes / GIB:.1f} |"
            )
    return "\n".join(lines)
