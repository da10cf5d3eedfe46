"""Prints the π0.5 prefix length with and without LightVLA pruning, and the pruner's telemetry.

    uv run examples/pi05_lightvla_pruning_demo.py                       # tiny random model, CPU, seconds
    uv run examples/pi05_lightvla_pruning_demo.py --keep-ratio 0.25     # a fixed serving budget
    uv run examples/pi05_lightvla_pruning_demo.py --full-size           # 3.3B parameters (use a GPU)

The weights are random unless ``--weights`` names a ``model.safetensors`` (e.g. a converted π0.5 checkpoint).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import tyro

from openpi.models.observation import Observation, random_observation
from openpi.models.pi0_config import Pi0Config, tiny_config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.weights import load_weights


@dataclasses.dataclass
class Args:
    full_size: bool = False
    """The full 3.3B-parameter π0.5 instead of the tiny one (use a GPU)."""
    weights: Path | None = None
    """A model.safetensors to load (e.g. a converted π0.5 checkpoint); None: random weights."""
    keep_ratio: float | None = None
    """Serving budget as a fraction of the valid image tokens."""
    keep_tokens: int | None = None
    """Serving budget as a count of image tokens (wins over --keep-ratio)."""
    batch_size: int = 1
    """Observations per call."""
    num_cameras: int = 3
    """Cameras present in each observation (256 image tokens each at 224 px)."""
    seed: int = 0
    """Seed of the random weights and observations."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Where the models run (default: CUDA when available)."""


def _config(args: Args) -> Pi0Config:
    if args.full_size:
        return Pi0Config(pi05=True, dtype="bfloat16")
    return tiny_config(action_horizon=10, max_token_len=48)


def _observation(config: Pi0Config, args: Args) -> Observation:
    prompt_tokens = min(int(config.max_token_len), 32)
    obs = random_observation(config, args.batch_size, num_cameras=args.num_cameras, valid_prompt_tokens=prompt_tokens)
    return obs.to(args.device)


def _run(model: PI0Pytorch, obs: Observation, device: str) -> tuple[int, int, float]:
    start = time.perf_counter()
    prefix = model.encode_prefix(obs)
    model.sample_actions(obs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return prefix.pad_masks.shape[1], int(prefix.pad_masks.sum(1).max()), time.perf_counter() - start


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    config = _config(args)
    budgets = {"token_prune_keep_ratio": args.keep_ratio, "token_prune_keep_tokens": args.keep_tokens}
    pruned_config = dataclasses.replace(config, token_pruning_enabled=True, **budgets)
    with torch.device(args.device):
        baseline = PI0Pytorch(config).eval()
        pruned = PI0Pytorch(pruned_config).eval()
    if args.weights is not None:
        load_weights(baseline, args.weights)
    pruned.load_state_dict(baseline.state_dict())
    pruned.set_token_pruner_collect_stats(True)
    obs = _observation(config, args)
    image_tokens = 256 * args.num_cameras

    with torch.inference_mode():
        _run(baseline, obs, args.device)  # warm-up
        rows = [("no pruning", *_run(baseline, obs, args.device)), ("lightvla", *_run(pruned, obs, args.device))]
    print(f"=== Prefix lengths (eval, {args.num_cameras} cameras = {image_tokens} image tokens) ===")
    for name, length, valid, seconds in rows:
        print(f"{name:11s} prefix={length:4d} tokens  valid={valid:4d}  sample_actions={seconds * 1e3:8.1f} ms")
    saved = rows[0][1] - rows[1][1]
    print(f"reduction:  {saved} tokens ({100 * saved / rows[0][1]:.1f}% of the prefix)")
    print("=== Pruning telemetry ===")
    for key, value in pruned.get_token_pruning_stats().items():
        print(f"  {key:32s} {value:.4g}")


if __name__ == "__main__":
    main(tyro.cli(Args))
