"""The FLOPs of a registered config (``scripts/estimate_flops.py``): ``sample_actions`` and one training step, per
part of the model, as a table and one JSON line; for a π0-FAST config, ``sample_tokens`` (the prefill and the decode
passes) and one training step."""

from __future__ import annotations

import dataclasses
import json
import math

import tyro

from openpi.models import flops
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.training import config as _config

GIGA = 1e9


@dataclasses.dataclass
class Args:
    config: tyro.conf.Positional[str]
    """A registered training config (e.g. pi05_libero_pytorch_lightvla)."""
    token_prune_keep_ratio: float | None = None
    """Count the model pruned to this fraction of the valid patches (instead of the config's budget)."""
    token_prune_keep_tokens: int | None = None
    """Count the model pruned to this many patches (instead of the config's budget)."""
    cameras: int = 3
    """Camera images per sample (every one goes through the vision tower)."""
    valid_prompt_tokens: int = 20
    """Valid tokens of the prompt (a LIBERO task); the model runs them rounded up to its prompt_trim_multiple."""
    num_steps: int = 10
    """Denoising steps of sample_actions."""
    decode_steps: int = 40
    """π0-FAST: tokens sample_tokens draws (a LIBERO chunk is about 30 FAST tokens, plus the markers and EOS)."""
    batch_size: int = 1
    """Samples per sample_actions call."""


def model_config(args: Args) -> Pi0Config | Pi0FastConfig:
    """The config's model with the budget ``args`` asks for (a budget turns pruning on)."""
    model = _config.get_config(args.config).model
    if args.token_prune_keep_ratio is not None and args.token_prune_keep_tokens is not None:
        raise ValueError("Give --token-prune-keep-ratio or --token-prune-keep-tokens, not both")
    if args.token_prune_keep_ratio is None and args.token_prune_keep_tokens is None:
        no_budget = model.token_prune_keep_ratio is None and model.token_prune_keep_tokens is None
        if model.token_pruning_enabled and no_budget:
            raise ValueError(
                f"{args.config} prunes with LightVLA's union of votes, whose kept count depends on the data: pass "
                "--token-prune-keep-tokens N (e.g. the prune/kept_tokens_overall_mean its training logs)"
            )
        return model
    return dataclasses.replace(
        model,
        token_pruning_enabled=True,
        token_prune_keep_ratio=args.token_prune_keep_ratio,
        token_prune_keep_tokens=args.token_prune_keep_tokens,
    )


def prompt_columns(model: Pi0Config | Pi0FastConfig, valid: int) -> int:
    """Prompt columns the model runs: the valid tokens rounded up to its trim multiple (all of them untrimmed; π0-FAST
    never trims)."""
    multiple = model.prompt_trim_multiple if isinstance(model, Pi0Config) else None
    if multiple is None:
        return int(model.max_token_len)
    return min(max(math.ceil(valid / multiple), 1) * multiple, int(model.max_token_len))


def estimate(args: Args) -> tuple[str, dict[str, float]]:
    """The table and the JSON summary (GFLOPs) of ``args``."""
    train_config = _config.get_config(args.config)
    model = model_config(args)
    if isinstance(model, Pi0FastConfig):
        return _fast_estimate(args, model, train_config)
    workload = flops.Workload(
        cameras=args.cameras,
        prompt_tokens=prompt_columns(model, args.valid_prompt_tokens),
        num_steps=args.num_steps,
        batch_size=args.batch_size,
    )
    sample = flops.sample_flops(model, workload)
    train_workload = dataclasses.replace(workload, batch_size=train_config.batch_size, num_steps=1)
    train = flops.train_flops(model, train_workload, train_config.gradient_checkpointing)
    summary = {
        "prefix_gflops": sample.prefix.total / GIGA,
        "denoise_gflops": sample.denoise.total / GIGA,
        "sample_gflops": sample.total / GIGA,
        "train_step_gflops": train.total / GIGA,
    }
    return _table(args, model, workload, sample, train, train_config), summary


def _fast_estimate(args: Args, model: Pi0FastConfig, train_config: _config.TrainConfig) -> tuple[str, dict[str, float]]:
    """π0-FAST's ``sample_tokens`` per part (the prefill, the decode passes, the whole call) and a training step."""
    workload = flops.Workload(
        cameras=args.cameras,
        prompt_tokens=prompt_columns(model, args.valid_prompt_tokens),
        num_steps=args.decode_steps,
        batch_size=args.batch_size,
    )
    count = flops.decode_flops(model, workload)
    train_workload = dataclasses.replace(workload, batch_size=train_config.batch_size)
    train = flops.fast_train_flops(model, train_workload, train_config.gradient_checkpointing)
    pruning = "unpruned"
    if model.token_pruning_enabled:
        pruning = f"pruned to {count.prefix_length - workload.prompt_tokens} image tokens (training runs unpruned)"
    lines = [
        f"{args.config}: {pruning}; {args.cameras} cameras, {workload.prompt_tokens} prompt columns; sample_tokens at "
        f"batch {args.batch_size} drawing {args.decode_steps} tokens ({count.decode_passes} decode passes); a training "
        f"step at batch {train_config.batch_size}, gradient checkpointing "
        f"{'on' if train_config.gradient_checkpointing else 'off'} (GFLOPs)",
        "",
        "| part | prefill | decode | sample_tokens | train forward | train backward |",
        "|---|---|---|---|---|---|",
    ]
    for part in flops.PARTS[:-1]:  # no action expert
        prefill, decode = count.prefill.by_part[part], count.decode.by_part[part]
        values = (prefill, decode, prefill + decode, train.forward.by_part[part], train.backward.by_part[part])
        lines.append(f"| {part} | " + " | ".join(f"{v / GIGA:,.1f}" for v in values) + " |")
    totals = (count.prefill.total, count.decode.total, count.total, train.forward.total, train.backward.total)
    lines.append("| **total** | " + " | ".join(f"**{v / GIGA:,.1f}**" for v in totals) + " |")
    summary = {
        "prefill_gflops": count.prefill.total / GIGA,
        "decode_gflops": count.decode.total / GIGA,
        "decode_pass_gflops": count.per_decode_pass / GIGA,
        "sample_gflops": count.total / GIGA,
        "train_step_gflops": train.total / GIGA,
    }
    return "\n".join(lines), summary


def _table(
    args: Args,
    model: Pi0Config,
    workload: flops.Workload,
    sample: flops.SampleFlops,
    train: flops.TrainFlops,
    train_config: _config.TrainConfig,
) -> str:
    pruning = "unpruned"
    if model.token_pruning_enabled:
        pruning = f"pruned to {sample.prefix_length - workload.prompt_tokens} image tokens"
    lines = [
        f"{args.config}: {pruning}; {args.cameras} cameras, {workload.prompt_tokens} prompt columns; "
        f"sample_actions at batch {args.batch_size} with {args.num_steps} steps; a training step at batch "
        f"{train_config.batch_size}, gradient checkpointing {'on' if train_config.gradient_checkpointing else 'off'} "
        f"(GFLOPs)",
        "",
        "| part | prefix | denoising | sample_actions | train forward | train backward |",
        "|---|---|---|---|---|---|",
    ]
    for part in flops.PARTS:
        values = (
            sample.prefix.by_part[part],
            sample.denoise.by_part[part],
            sample.prefix.by_part[part] + sample.denoise.by_part[part],
            train.forward.by_part[part],
            train.backward.by_part[part],
        )
        lines.append(f"| {part} | " + " | ".join(f"{v / GIGA:,.1f}" for v in values) + " |")
    totals = (sample.prefix.total, sample.denoise.total, sample.total, train.forward.total, train.backward.total)
    lines.append("| **total** | " + " | ".join(f"**{v / GIGA:,.1f}**" for v in totals) + " |")
    if model.token_pruning_enabled and not model.token_prune_budget_training:
        lines += ["", "LightVLA's union trains on its distinct votes, a data-dependent count: counted as every patch."]
    return "\n".join(lines)


def main(args: Args) -> dict[str, float]:
    """Prints the table, then the JSON summary as the last line; returns the summary."""
    table, summary = estimate(args)
    print(table)
    print(json.dumps(summary))
    return summary
