"""How often a compiled pruned model recompiles over varied observations, with and without shape buckets.

    uv run scripts/bench/bench_compile_buckets.py --observations 200

Compiles ``encode_prefix`` (where pruning and prompt trimming set the shapes) of the tiny π0.5 with a counting
backend (``dynamic=False``: every new shape is a new graph, as CUDA graphs require) and feeds it observations whose
images and valid prompt lengths vary (8-64 tokens of a 200-token padded prompt), with the pruner's argmax union
deciding the kept count. Reports the distinct (prompt, kept) shapes met and the graphs compiled, per setting,
written into ``--output`` (a new run of the same command replaces its table).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch
import tyro

from openpi.models.observation import random_observation
from openpi.models.pi0_config import tiny_config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.shared import results_file


@dataclasses.dataclass
class Args:
    observations: int = 200
    kept_multiple: int = 16
    output: Path = Path(__file__).parent / "results" / "compile_buckets.md"


def count_compiles(config, observations: int) -> tuple[int, int, float]:
    """(distinct prefix shapes, graphs compiled, seconds) over ``observations`` varied observations."""
    torch.manual_seed(0)
    model = PI0Pytorch(config).eval()
    for parameter in model.parameters():  # a fresh model's zero-initialised layers would make every vote the same
        parameter.data = torch.randn_like(parameter) * 0.1
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(1)
        return graph_module.forward

    torch._dynamo.reset()
    encode = torch.compile(model.encode_prefix, backend=counting_backend, dynamic=False)
    shapes = set()
    start = time.perf_counter()
    with torch.inference_mode():
        for seed in range(observations):
            observation = random_observation(config, seed=seed, valid_prompt_tokens=8 + seed % 57)
            cache = encode(observation)
            shapes.add(tuple(cache.pad_masks.shape))
    return len(shapes), len(graphs), time.perf_counter() - start


def main(args: Args) -> None:
    torch._dynamo.config.cache_size_limit = 10_000  # count every recompilation instead of falling back to eager
    base = tiny_config(token_pruning_enabled=True, token_prune_center_patches=False)
    settings = {
        "no buckets (prompt untrimmed, kept count exact)": dataclasses.replace(base, prompt_trim_multiple=None),
        "prompt trimmed to a multiple of 16, kept count exact": base,
        f"prompt and kept count in buckets of 16 / {args.kept_multiple}": dataclasses.replace(
            base, token_prune_kept_multiple=args.kept_multiple
        ),
    }
    command = "uv run scripts/bench/bench_compile_buckets.py " + " ".join(sys.argv[1:])
    lines = [
        f"## {time.strftime('%Y-%m-%d')}, CPU: {args.observations} observations",
        "",
        "```",
        command,
        "```",
        "",
        f"Tiny π0.5, 3 cameras, a 200-token padded prompt with 8-64 valid tokens, {args.observations} observations, "
        "`encode_prefix` compiled with a counting backend (`dynamic=False`).",
        "",
        "| setting | distinct prefix shapes | graphs compiled | seconds |",
        "|---|---|---|---|",
    ]
    for name, config in settings.items():
        shapes, graphs, seconds = count_compiles(config, args.observations)
        lines.append(f"| {name} | {shapes} | {graphs} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    results_file.write_run(args.output, command, lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
