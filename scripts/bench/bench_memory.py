"""The training memory estimator (``openpi.training.memory``) against measured peaks, per mode, on the CPU.

    uv run scripts/bench/bench_memory.py                       # tiny + mid size, every mode

Each (size, mode) runs ``--steps`` training steps exactly as the trainer does (``trainer.train_step``: float32,
AdamW, synthetic batches of 3 cameras at 224 px and a ``--prompt-tokens`` prompt), twice, each in a fresh process:

- **tensor peak**: the most bytes of tensors alive at once, from ``torch.profiler``'s memory timeline (every CPU
  allocation and free inside the steps, model building included). This is what the estimator estimates and the
  CPU counterpart of ``torch.cuda.max_memory_allocated``: no code pages, thread stacks or allocator caching.
- **RSS peak**: the peak resident set size above the process's size before the model was built (no profiler), with
  glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``; by default glibc raises it after large frees
  and keeps freed heap blocks resident). It adds what the process needs beyond tensors (library code paged in on
  first use, thread-pool workspaces): 110–130 MiB in every case of the committed run, 2–3× the tiny model's tensors.

Modes: ``full`` (every parameter trains), ``lora`` (rank-16 adapters on both Gemmas, the ``lora`` freeze filter: the
language model's and expert's base weights frozen), ``frozen-vision`` (the ``vision`` filter), each with gradient
checkpointing off and on. Writes a Markdown table (estimate, measured, ratio)
into ``--output`` (a new run of the same command replaces its table).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bench_common
import torch
import tyro

from openpi.models import variants
from openpi.models.pi0_config import Pi0Config, mid_config, tiny_config
from openpi.shared import results_file
from openpi.training import config as _config
from openpi.training import memory, memory_profile

SIZES = {"tiny": tiny_config(), "mid": mid_config()}
MODES = {"full": None, "lora": "lora", "frozen-vision": "vision"}
MIB = bench_common.MIB


@dataclasses.dataclass
class Args:
    sizes: tuple[str, ...] = ("tiny", "mid")
    modes: tuple[str, ...] = tuple(MODES)
    batch_size: int = 4
    prompt_tokens: int = 32
    steps: int = 2
    """Steps per measurement: the second is the first with optimizer state, where the peak comes."""
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


def measure_rss(config: _config.TrainConfig, steps: int) -> float:
    """Peak RSS increase (MiB) over building ``config``'s model and ``steps`` training steps (in a fresh process)."""
    torch.set_num_threads(2)
    before = bench_common.rss_mib()
    memory_profile.run_steps(config, steps)
    return bench_common.peak_rss_mib() - before


def measure_tensors(config: _config.TrainConfig, steps: int) -> float:
    """The most MiB of tensors alive at once over building ``config``'s model and ``steps`` training steps."""
    torch.set_num_threads(2)
    return memory_profile.tensor_peak_bytes(config, steps) / MIB


def _in_fresh_process(
    context: multiprocessing.context.BaseContext,
    measure: Callable[[_config.TrainConfig, int], float],
    config: _config.TrainConfig,
    steps: int,
) -> float:
    with context.Pool(1) as pool:
        return pool.apply(measure, (config, steps))


def main(args: Args) -> None:
    command = "uv run scripts/bench/bench_memory.py " + " ".join(sys.argv[1:])
    header = [
        f"## {time.strftime('%Y-%m-%d')} — CPU, float32, batch {args.batch_size}, 3 cameras at 224 px, "
        f"{args.prompt_tokens} prompt tokens, peak over {args.steps} steps",
        "",
        "```",
        command,
        "```",
        "",
        "| size | mode | checkpointing | trainable params | weights | gradients | optimizer | batch | activations "
        "| estimate (MiB) | tensor peak (MiB) | tensor peak / estimate | RSS peak (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))  # read by the spawned processes' glibc
    context = multiprocessing.get_context("spawn")
    for size in args.sizes:
        for mode in args.modes:
            for checkpointing in (False, True):
                config = train_config(size, mode, checkpointing, args)
                estimate = memory.estimate(config, prompt_tokens=args.prompt_tokens)
                measures = (measure_tensors, measure_rss)
                tensors, rss = (_in_fresh_process(context, measure, config, args.steps) for measure in measures)
                parts = (estimate.weight_bytes, estimate.gradient_bytes, estimate.optimizer_bytes, estimate.batch_bytes)
                ratio = tensors * MIB / estimate.total_bytes
                rows.append(
                    f"| {size} | {mode} | {'on' if checkpointing else 'off'} | {estimate.trainable_parameters:,} | "
                    + " | ".join(f"{b / MIB:.0f}" for b in (*parts, estimate.activation_bytes))
                    + f" | {estimate.total_bytes / MIB:.0f} | {tensors:.0f} | {ratio:.2f} | {rss:.0f} |"
                )
                print(rows[-1], flush=True)
    results_file.write_run(args.output, command, [*header, *rows])


if __name__ == "__main__":
    main(tyro.cli(Args))
