"""The training memory estimator (``openpi.training.memory``) against measured peaks, per mode, on the CPU.

    uv run scripts/bench/bench_memory.py                       # tiny + mid size, every mode

Each (size, mode) runs ``--steps`` training steps exactly as the trainer does (``trainer.train_step``: float32,
AdamW, synthetic batches of 3 cameras at 224 px and a ``--prompt-tokens`` prompt) in a fresh process, and records the
peak resident set size above the process's size before the model was built (so the Python and library footprint is
not counted). The measuring processes run with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``):
by default glibc raises it after large frees and then serves big tensors from the heap, whose freed blocks stay in
the resident set, so the peak would measure the allocator's fragmentation rather than the tensors alive at once.
Modes: ``full`` (every parameter trains), ``lora`` (rank-16 adapters on both Gemmas, the ``lora`` freeze filter: the
language model's and expert's base weights frozen), ``frozen-vision`` (the ``vision`` filter), each with gradient
checkpointing off and on. Appends a Markdown table (estimate, measured, ratio) to ``--output``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from pathlib import Path

import bench_common
import torch
import tyro

from openpi.models import variants
from openpi.models.observation import random_observation
from openpi.models.pi0_config import Pi0Config, mid_config, tiny_config
from openpi.training import config as _config
from openpi.training import memory, trainer

SIZES = {"tiny": tiny_config(), "mid": mid_config()}
MODES = {"full": None, "lora": "lora", "frozen-vision": "vision"}
MIB = bench_common.MIB


@dataclasses.dataclass
class Args:
    sizes: tuple[str, ...] = ("tiny", "mid")
    modes: tuple[str, ...] = tuple(MODES)
    batch_size: int = 4
    prompt_tokens: int = 32
    steps: int = 3
    output: Path = Path(__file__).parent / "results" / "memory.md"


def train_config(size: str, mode: str, checkpointing: bool, args: Args) -> _config.TrainConfig:
    """The float32 training config of one case (LoRA adapters added to both Gemmas in ``lora`` mode)."""
    model = dataclasses.replace(SIZES[size], max_token_len=args.prompt_tokens, dtype="float32")
    if mode == "lora":
        model = _with_lora(model)
    return _config.TrainConfig(
        name="bench_memory",
        model=model,
        pytorch_training_precision="float32",
        freeze_filter=MODES[mode],
        gradient_checkpointing=checkpointing,
        batch_size=args.batch_size,
    )


def _with_lora(model: Pi0Config) -> Pi0Config:
    def adapted(variant: str) -> str:
        return variants.spell_variant(variants.get_gemma_config(variant)) + ",lora_rank=16,lora_alpha=16"

    return dataclasses.replace(
        model,
        paligemma_variant=adapted(model.paligemma_variant),
        action_expert_variant=adapted(model.action_expert_variant),
    )


def measure(config: _config.TrainConfig, steps: int) -> float:
    """Peak RSS increase (MiB) over ``steps`` training steps of ``config`` (run in a fresh process)."""
    torch.set_num_threads(2)
    before = bench_common.rss_mib()
    torch.manual_seed(0)
    model = trainer.build_model(config, torch.device("cpu"), load_pretrained=False).train()
    optimizer = config.optimizer.build([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    observation = random_observation(config.model, config.batch_size)
    actions = torch.randn(config.batch_size, config.model.action_horizon, config.model.action_dim)
    for step in range(steps):
        bench_common.train_step(model, optimizer, observation, actions, step)
    return bench_common.peak_rss_mib() - before


def main(args: Args) -> None:
    header = [
        f"## {time.strftime('%Y-%m-%d')} — CPU, float32, batch {args.batch_size}, 3 cameras at 224 px, "
        f"{args.prompt_tokens} prompt tokens, peak over {args.steps} steps",
        "",
        "```",
        "uv run scripts/bench/bench_memory.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        "| size | mode | checkpointing | trainable params | weights | gradients | optimizer | activations "
        "| estimate (MiB) | measured peak (MiB) | measured / estimate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))  # read by the spawned processes' glibc
    context = multiprocessing.get_context("spawn")
    for size in args.sizes:
        for mode in args.modes:
            for checkpointing in (False, True):
                config = train_config(size, mode, checkpointing, args)
                estimate = memory.estimate(config, prompt_tokens=args.prompt_tokens)
                with context.Pool(1) as pool:
                    measured = pool.apply(measure, (config, args.steps))
                parts = (estimate.weight_bytes, estimate.gradient_bytes, estimate.optimizer_bytes)
                ratio = measured * MIB / estimate.total_bytes
                rows.append(
                    f"| {size} | {mode} | {'on' if checkpointing else 'off'} | {estimate.trainable_parameters:,} | "
                    + " | ".join(f"{b / MIB:.0f}" for b in (*parts, estimate.activation_bytes))
                    + f" | {estimate.total_bytes / MIB:.0f} | {measured:.0f} | {ratio:.2f} |"
                )
                print(rows[-1], flush=True)
    bench_common.append_markdown(args.output, [*header, *rows])


if __name__ == "__main__":
    main(tyro.cli(Args))
