"""FLOPs of full-size π0.5 inference, pruned and unpruned, against the baseline an upstream user has; and of
π0-FAST's decoding, pruned and unpruned.

    uv run scripts/bench/bench_flops.py
    uv run scripts/bench/bench_flops.py --model pi0_fast

Counted from the config with ``openpi.models.flops`` (a test holds the count within 0.1% of
``torch.utils.flop_counter`` on real forward and backward passes): ``sample_actions`` of the published π0.5 shape
(SigLIP So400m, Gemma 2B, expert 300M), batch 1, 3 cameras, 10 denoising steps, a LIBERO prompt of
``--valid-prompt-tokens`` tokens. The baseline runs the prompt padded to 200 tokens, unpruned, as upstream does; ours
trims the padding to a multiple of 16. The floor is what no budget removes: the vision tower still encodes every
patch. ``--model pi0_fast`` counts π0-FAST's ``sample_tokens`` at upstream's LIBERO shape (3 cameras, the prompt's
180 columns, a cache sized for 256 decode steps) drawing ``--decode-steps`` tokens: the prefill and the decode passes.
Writes the table into ``--output`` (a new run of the same command replaces its table).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Literal

import tyro

from openpi.cli.estimate_flops import prompt_columns
from openpi.models import flops
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.shared import results_file

BUDGETS = (0.25, 0.10, 0.05)
FAST_PROMPT_COLUMNS = 180  # upstream's pi0_fast_libero max_token_len; π0-FAST runs every column
BASELINE = "upstream baseline: unpruned, prompt padded to 200"
GIGA = 1e9


@dataclasses.dataclass
class Args:
    model: Literal["pi05", "pi0_fast"] = "pi05"
    """Which model's inference to count."""
    decode_steps: int = 40
    """π0-FAST: tokens drawn (a 10 × 7 LIBERO chunk is about 30 FAST tokens, plus "Action: ", "|" and EOS)."""
    valid_prompt_tokens: int = 20
    """Valid tokens of the LIBERO prompt."""
    output: Path = Path(__file__).parent / "results" / "flops.md"


def rows(args: Args) -> list[str]:
    """One row per variant: GFLOPs of the prefix, the denoising and the whole call, and the change against the
    baseline."""
    base = Pi0Config(pi05=True)
    ours = flops.Workload(prompt_tokens=prompt_columns(base, args.valid_prompt_tokens))
    variants = {
        "upstream baseline: unpruned, prompt padded to 200": (base, dataclasses.replace(ours, prompt_tokens=200))
    }
    variants["unpruned, prompt trimmed"] = (base, ours)
    for ratio in BUDGETS:
        pruned = dataclasses.replace(base, token_pruning_enabled=True, token_prune_keep_ratio=ratio)
        variants[f"keep {ratio:.0%}"] = (pruned, ours)
    pruned_to_nothing = dataclasses.replace(base, token_pruning_enabled=True, token_prune_keep_tokens=1)
    variants["floor: no image token kept"] = (pruned_to_nothing, dataclasses.replace(ours, kept_patches=0))
    counts = {name: flops.sample_flops(config, workload) for name, (config, workload) in variants.items()}
    baseline = counts[BASELINE].total
    unpruned = counts["unpruned, prompt trimmed"].total
    lines = []
    for name, count in counts.items():
        image_tokens = count.prefix_length - variants[name][1].prompt_tokens
        vision = count.prefix.by_part[flops.VISION] + count.prefix.by_part[flops.PROJECTOR]
        lines.append(
            f"| {name} | {image_tokens} | {count.prefix_length} | {vision / GIGA:,.0f} | "
            f"{count.prefix.by_part[flops.PRUNER] / GIGA:,.1f} | "
            f"{count.prefix.by_part[flops.LANGUAGE_MODEL] / GIGA:,.0f} | {count.denoise.total / GIGA:,.1f} | "
            f"{count.total / GIGA:,.0f} | {count.total / baseline - 1:+.1%} | {count.total / unpruned - 1:+.1%} |"
        )
    return lines


def _fast_config(keep_ratio: float | None) -> Pi0FastConfig:
    pruning = {"token_pruning_enabled": True, "token_prune_keep_ratio": keep_ratio} if keep_ratio else {}
    return Pi0FastConfig(max_token_len=FAST_PROMPT_COLUMNS, **pruning)


def fast_rows(args: Args) -> list[str]:
    """One row per budget: GFLOPs of the prefill, the decode passes and the whole call."""
    workload = flops.Workload(prompt_tokens=FAST_PROMPT_COLUMNS, num_steps=args.decode_steps)
    budgets: dict[str, float | None] = {"unpruned": None} | {f"keep {ratio:.0%}": ratio for ratio in BUDGETS}
    counts = {name: flops.decode_flops(_fast_config(ratio), workload) for name, ratio in budgets.items()}
    unpruned = counts["unpruned"]
    lines = []
    for name, count in counts.items():
        vision = count.prefill.by_part[flops.VISION] + count.prefill.by_part[flops.PROJECTOR]
        lines.append(
            f"| {name} | {count.prefix_length - FAST_PROMPT_COLUMNS} | {count.prefix_length} | {vision / GIGA:,.0f} | "
            f"{count.prefill.by_part[flops.PRUNER] / GIGA:,.1f} | "
            f"{count.prefill.by_part[flops.LANGUAGE_MODEL] / GIGA:,.0f} | {count.per_decode_pass / GIGA:,.2f} | "
            f"{count.decode.total / GIGA:,.0f} | {count.total / GIGA:,.0f} | {count.total / unpruned.total - 1:+.1%} |"
        )
    return lines


def _fast_header(args: Args, command: str) -> list[str]:
    passes = args.decode_steps - 1
    return [
        f"## {time.strftime('%Y-%m-%d')} — full-size π0-FAST (LIBERO shape), batch 1, 3 cameras, "
        f"{FAST_PROMPT_COLUMNS} prompt columns, {args.decode_steps} tokens decoded (GFLOPs, counted from the config)",
        "",
        "```",
        command,
        "```",
        "",
        "| variant | image tokens | prefix length | vision tower + projector | pruner | language model (prefill) "
        f"| per decode pass | decode ({passes} passes) | sample_tokens | vs unpruned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]


def main(args: Args) -> None:
    command = ("uv run scripts/bench/bench_flops.py " + " ".join(sys.argv[1:])).strip()
    if args.model == "pi0_fast":
        lines = [*_fast_header(args, command), *fast_rows(args)]
        print("\n".join(lines))
        results_file.write_run(args.output, command, lines)
        return
    header = [
        f"## {time.strftime('%Y-%m-%d')} — full-size π0.5 (action horizon 50), batch 1, 3 cameras, "
        f"{args.valid_prompt_tokens}-token prompt, 10 denoising steps (GFLOPs, counted from the config)",
        "",
        "```",
        command,
        "```",
        "",
        "| variant | image tokens | prefix length | vision tower + projector | pruner | language model (prefix) "
        "| action expert (10 steps) | sample_actions | vs upstream | vs unpruned trimmed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = rows(args)
    print("\n".join([*header, *table]))
    results_file.write_run(args.output, command, [*header, *table])


if __name__ == "__main__":
    main(tyro.cli(Args))
