"""How much memory fine-tuning a config needs, per mode: weights, gradients, optimizer state, EMA, the batch and
activations.

    uv run scripts/estimate_memory.py pi05_libero_pytorch --batch-size 32
    uv run scripts/estimate_memory.py pi05_libero_pytorch --batch-size 32 --fsdp-devices 1 8 --prompt-tokens 64

Builds the model on the meta device (nothing is allocated, any size works) and measures the activations of one
training forward at the given batch and prompt length (see ``openpi.training.memory`` for what is counted and what
is not). Prints one row per mode: the config as it is, LoRA (the ``*_lora`` Gemma variants with the ``lora`` freeze
filter and no EMA, as the low-memory configs), frozen vision, each with gradient checkpointing on and off, and per
FSDP rank count.
"""

from __future__ import annotations

import dataclasses

import tyro

from openpi.training import config as _config
from openpi.training import memory

GIB = 2**30
LORA_VARIANTS = {"gemma_2b": "gemma_2b_lora", "gemma_300m": "gemma_300m_lora"}


@dataclasses.dataclass
class Args:
    config: tyro.conf.Positional[str]
    """A registered training config (e.g. pi05_libero_pytorch)."""
    batch_size: int | None = None
    """Samples per rank (default: the config's batch)."""
    prompt_tokens: int | None = None
    """Prompt columns after trimming (default: the config's max_token_len)."""
    fsdp_devices: tuple[int, ...] = (1,)
    """Per-rank share with weights, gradients, optimizer state and EMA sharded over this many ranks (``--fsdp``)."""


def modes(config: _config.TrainConfig) -> dict[str, _config.TrainConfig]:
    """The config as it is, with LoRA, and with the vision tower frozen; each with checkpointing off and on."""
    model = config.model
    lora_model = dataclasses.replace(
        model,
        paligemma_variant=LORA_VARIANTS.get(model.paligemma_variant, model.paligemma_variant),
        action_expert_variant=LORA_VARIANTS.get(model.action_expert_variant, model.action_expert_variant),
    )
    variants = {
        "as configured": config,
        "lora": dataclasses.replace(config, model=lora_model, freeze_filter="lora", ema_decay=None),
        "frozen vision": dataclasses.replace(config, freeze_filter="vision"),
    }
    return {
        f"{name}, checkpointing {'on' if on else 'off'}": dataclasses.replace(variant, gradient_checkpointing=on)
        for name, variant in variants.items()
        for on in (False, True)
    }


def main(args: Args) -> None:
    config = _config.get_config(args.config)
    print(
        f"{args.config}: {config.pytorch_training_precision} weights, EMA {config.ema_decay}, batch "
        f"{args.batch_size or config.batch_size} per rank, {args.prompt_tokens or config.model.max_token_len} prompt "
        "tokens (GiB per rank)"
    )
    print("| mode | FSDP ranks | trainable params | weights | grads | optimizer | EMA | batch | activations | total |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, variant in modes(config).items():
        for ranks in args.fsdp_devices:
            batch = args.batch_size or config.batch_size
            e = memory.estimate(variant, batch_size=batch, prompt_tokens=args.prompt_tokens, fsdp_devices=ranks)
            parts = (e.weight_bytes, e.gradient_bytes, e.optimizer_bytes, e.ema_bytes)
            parts += (e.batch_bytes, e.activation_bytes)
            print(
                f"| {name} | {ranks} | {e.trainable_parameters / 1e9:.2f} B | "
                + " | ".join(f"{b / GIB:.1f}" for b in parts)
                + f" | {e.total_bytes / GIB:.1f} |"
            )


if __name__ == "__main__":
    main(tyro.cli(Args))
