"""Inference cost of LightVLA pruning: sample_actions latency and prefix KV-cache size, pruned vs unpruned.

    uv run scripts/bench/bench_pruning.py                       # tiny + mid-size on CPU
    uv run scripts/bench/bench_pruning.py --sizes full --device cuda --repeats 20

All variants of one size share the same weights and inputs (3 cameras, batch 1) and are timed round-robin in the
same process, so the ratios are comparable even on a busy machine. Results are appended as a Markdown table to
``--output`` together with the command line.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import tyro

from openpi.models.observation import IMAGE_KEYS, Observation, random_observation
from openpi.models.pi0_config import Pi0Config, mid_config, tiny_config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch

SIZES = {"tiny": tiny_config(), "mid": mid_config(), "full": Pi0Config(pi05=True)}
BUDGETS: tuple[float | None, ...] = (None, 0.5, 0.25, 0.1)


@dataclasses.dataclass
class Args:
    sizes: tuple[str, ...] = ("tiny", "mid")
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 5
    prompt_tokens: int = 48
    output: Path = Path(__file__).parent / "results" / "pruning.md"


def _observation(config: Pi0Config, prompt_tokens: int, device: str) -> Observation:
    config = dataclasses.replace(config, max_token_len=prompt_tokens)
    return random_observation(config, num_cameras=len(IMAGE_KEYS)).to(device)


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
    variants = {"unpruned": base}
    for ratio in BUDGETS:
        pruned_config = dataclasses.replace(config, token_pruning_enabled=True, token_prune_keep_ratio=ratio)
        with torch.device(args.device):
            model = PI0Pytorch(pruned_config).eval()
        model.load_state_dict(base.state_dict())
        variants["argmax union" if ratio is None else f"keep {ratio:.0%}"] = model
    obs = _observation(config, args.prompt_tokens, args.device)
    times: dict[str, list[float]] = {key: [] for key in variants}
    with torch.inference_mode():
        for model in variants.values():
            _timed(model, obs, args.device)  # warm-up
        for _ in range(args.repeats):
            for key, model in variants.items():
                times[key].append(_timed(model, obs, args.device))
        caches = {key: model.encode_prefix(obs) for key, model in variants.items()}

    base_ms, base_bytes = statistics.median(times["unpruned"]), caches["unpruned"].num_bytes
    rows = []
    for key in variants:
        ms, cache = statistics.median(times[key]), caches[key]
        image_tokens = int(cache.pad_masks.sum()) - args.prompt_tokens
        rows.append(
            f"| {name} | {key} | {image_tokens} | {cache.num_bytes / 2**20:.2f} | {cache.num_bytes / base_bytes:.3f} "
            f"| {ms:.1f} | {ms / base_ms:.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(args: Args) -> None:
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    header = [
        f"## {time.strftime('%Y-%m-%d')} — {device_name}, {args.dtype}, batch 1, 3 cameras (768 image tokens), "
        f"{args.prompt_tokens} prompt tokens, 10 denoising steps, median of {args.repeats}",
        "",
        "```",
        "uv run scripts/bench/bench_pruning.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        "| size | prefix | image tokens kept | KV cache (MiB) | KV ratio | sample_actions (ms) | latency ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [row for size in args.sizes for row in bench_size(size, args)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("a") as f:
        f.write("\n".join([*header, *rows, "", ""]))


if __name__ == "__main__":
    main(tyro.cli(Args))
