"""FLOPs of full-size π0.5 inference, pruned and unpruned, against the baseline an upstream user has.

    uv run scripts/bench/bench_flops.py

Counted from the config with ``openpi.models.flops`` (a test holds the count within 0.1% of
``torch.utils.flop_counter`` on real forward and backward passes): ``sample_actions`` of the published π0.5 shape
(SigLIP So400m, Gemma 2B, expert 300M), batch 1, 3 cameras, 10 denoising steps, a LIBERO prompt of
``--valid-prompt-tokens`` tokens. The baseline runs the prompt padded to 200 tokens, unpruned, as upstream does; ours
trims the padding to a multiple of 16. The floor is what no budget removes: the vision tower still encodes every
patch. Writes the table into ``--output`` (a new run of the same command replaces its table).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import tyro

from openpi.cli.estimate_flops import prompt_columns
from openpi.models import flops
from openpi.models.pi0_config import Pi0Config
from openpi.shared import results_file

BUDGETS = (0.25, 0.10, 0.05)
BASELINE = "upstream baseline: unpruned, prompt padded to 200"
GIGA = 1e9


@dataclasses.dataclass
class Args:
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


def main(args: Args) -> None:
    command = "uv run scripts/bench/bench_flops.py " + " ".join(sys.argv[1:])
    header = [
        f"## {time.strftime('%Y-%m-%d')} — full-size π0.5 (action horizon 50), batch 1, 3 cameras, "
        f"{args.valid_prompt_tokens}-token prompt, 10 denoising steps (GFLOPs, counted from the config)",
        "",
        "```",
        command.strip(),
        "```",
        "",
        "| variant | image tokens | prefix length | vision tower + projector | pruner | language model (prefix) "
        "| action expert (10 steps) | sample_actions | vs upstream | vs unpruned trimmed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = rows(args)
    print("\n".join([*header, *table]))
    results_file.write_run(args.output, command.strip(), [*header, *table])


if __name__ == "__main__":
    main(tyro.cli(Args))
