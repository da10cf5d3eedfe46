"""Inference cost of LightVLA pruning: sample_actions latency and prefix KV-cache size, pruned vs unpruned, with the
prompt padding trimmed or not.

    uv run scripts/bench/bench_pruning.py                       # tiny + mid-size on CPU
    uv run scripts/bench/bench_pruning.py --sizes full --dtype bfloat16 --repeats 3   # full size, fits 24 GB
    uv run scripts/bench/bench_pruning.py --sizes full --device cuda --dtype bfloat16 --repeats 20

The prompt is padded to ``--prompt-tokens`` (200, what the π0.5 pipeline pads to) with ``--valid-prompt-tokens``
valid ones (a LIBERO prompt). One set of weights per size: the variants are views of it (models built on the meta
device and given the same tensors) whose budget and prompt trimming differ, timed round-robin on the same inputs
(3 cameras, batch 1), so the ratios are comparable even on a busy machine. Results are written as a Markdown table
into ``--output`` with the command line (a new run of the same command replaces its table).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import bench_common
import torch
import tyro

from openpi.models.batch import IMAGE_KEYS
from openpi.models.observation import Observation, random_observation
from openpi.models.pi0_config import Pi0Config, mid_config, tiny_config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.shared import results_file

SIZES = {"tiny": tiny_config(), "mid": mid_config(), "full": Pi0Config(pi05=True)}
BUDGETS: tuple[float | None, ...] = (None, 0.5, 0.25, 0.1)


@dataclasses.dataclass
class Args:
    sizes: tuple[str, ...] = ("tiny", "mid")
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 5
    prompt_tokens: int = 200
    """The padded prompt length (the π0.5 pipeline's max_token_len)."""
    valid_prompt_tokens: int = 20
    """Valid tokens of the padded prompt (a LIBERO task prompt)."""
    output: Path = Path(__file__).parent / "results" / "pruning.md"


def _observation(config: Pi0Config, args: Args) -> Observation:
    config = dataclasses.replace(config, max_token_len=args.prompt_tokens)
    observation = random_observation(config, num_cameras=len(IMAGE_KEYS), valid_prompt_tokens=args.valid_prompt_tokens)
    return observation.to(args.device)


def _timed(model: PI0Pytorch, obs: Observation, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.sample_actions(obs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def bench_size(name: str, args: Args) -> list[str]:
    config = dataclasses.replace(SIZES[name], dtype=args.dtype, max_token_len=args.prompt_tokens)
    torch.manual_seed(0)
    with torch.device(args.device):
        base = PI0Pytorch(config).eval()
    untrimmed = dataclasses.replace(config, prompt_trim_multiple=None)
    pruned, pruned_untrimmed = (
        bench_common.view(base, dataclasses.replace(c, token_pruning_enabled=True)) for c in (config, untrimmed)
    )
    variants: dict[str, tuple[PI0Pytorch, float | None]] = {
        "unpruned": (base, None),
        "unpruned, prompt untrimmed": (bench_common.view(base, untrimmed), None),
    }
    for ratio in BUDGETS:
        label = "argmax union" if ratio is None else f"keep {ratio:.0%}"
        variants[label] = (pruned, ratio)
        variants[f"{label}, prompt untrimmed"] = (pruned_untrimmed, ratio)
    obs = _observation(config, args)
    times: dict[str, list[float]] = {key: [] for key in variants}
    caches = {}
    with torch.inference_mode():
        for _ in range(args.repeats + 1):  # the first round warms up
            for key, (model, ratio) in variants.items():
                if model.token_pruning_enabled:
                    model.set_token_pruner_keep_ratio(ratio)
                times[key].append(_timed(model, obs, args.device))
                caches.setdefault(key, model.encode_prefix(obs))

    base_ms, base_bytes = statistics.median(times["unpruned"][1:]), caches["unpruned"].num_bytes
    upstream_ms = statistics.median(times["unpruned, prompt untrimmed"][1:])  # what upstream runs
    rows = []
    for key in variants:
        ms, cache = statistics.median(times[key][1:]), caches[key]
        image_tokens = int(cache.pad_masks.sum()) - args.valid_prompt_tokens
        prefix = cache.pad_masks.shape[1]
        rows.append(
            f"| {name} | {key} | {image_tokens} | {prefix} | {cache.num_bytes / 2**20:.2f} | "
            f"{cache.num_bytes / base_bytes:.3f} | {ms:.1f} | {ms / base_ms:.3f} | {ms / upstream_ms:.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(args: Args) -> None:
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    command = "uv run scripts/bench/bench_pruning.py " + " ".join(sys.argv[1:])
    header = [
        f"## {time.strftime('%Y-%m-%d')} — {device_name}, {args.dtype}, batch 1, 3 cameras, prompt padded to "
        f"{args.prompt_tokens} tokens ({args.valid_prompt_tokens} valid), 10 denoising steps, median of {args.repeats}",
        "",
        "```",
        command,
        "```",
        "",
        "| size | variant | image tokens kept | prefix length | KV cache (MiB) | KV ratio | sample_actions (ms) "
        "| latency ratio | vs upstream's baseline (unpruned, prompt untrimmed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [row for size in args.sizes for row in bench_size(size, args)]
    results_file.write_run(args.output, command, [*header, *rows])


if __name__ == "__main__":
    main(tyro.cli(Args))
