"""How much memory fine-tuning a config needs, per mode: weights, gradients, optimizer state, EMA, the batch and
activations.

    uv run scripts/estimate_memory.py pi05_libero_pytorch --batch-size 32
    uv run scripts/estimate_memory.py pi05_libero_pytorch --batch-size 32 --fsdp-devices 1 8 --prompt-tokens 64

Builds the model on the meta device (nothing is allocated, any size works) and measures the activations of one
training forward at the given batch and prompt length (see ``openpi.training.memory`` for what is counted and what
is not). Prints one row per mode: the config as it is, LoRA (the ``*_lora`` Gemma variants, rank-16 adapters on other
sizes, their base weights frozen and no EMA, as the low-memory configs), frozen vision, each with gradient
checkpointing on and off, and per FSDP rank count.
"""

from __future__ import annotations

import dataclasses

import tyro

from openpi.cli import user_errors
from openpi.training import config as _config


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


def main() -> None:
    args = tyro.cli(Args)
    config = _config.get_config(args.config)
    from openpi.training import memory_report  # torch: imported once the arguments parse, not by --help

    print(
        memory_report.report(
            config, batch_size=args.batch_size, prompt_tokens=args.prompt_tokens, fsdp_devices=args.fsdp_devices
        )
    )


if __name__ == "__main__":
    user_errors.run(main)
