"""JAX vs PyTorch ``sample_actions`` latency, unpruned and at fixed pruning budgets, on the same weights.

    uv run scripts/bench/bench_jax.py                                   # tiny + mid-size on CPU, float32
    uv run scripts/bench/bench_jax.py --torch-compile                  # adds torch.compile (minutes per graph on CPU)
    uv run scripts/bench/bench_jax.py --sizes full --dtype bfloat16 --repeats 20          # on a GPU

One set of weights per size: the JAX tree is initialised (zero-initialised leaves made small and random), and the
PyTorch model loads its conversion (the
converter's rules), so both compute the same function (the table's last column: relative difference of their
actions). Inputs: batch 1, 3 cameras, the prompt padded to ``--prompt-tokens`` (200, what the π0.5 pipeline pads
to) with ``--valid-prompt-tokens`` valid ones; both frameworks trim the padding. The variants are timed round-robin
(median of ``--repeats`` after one warm-up round, which for JAX includes compiling), so ratios are comparable on a busy
machine. Results are written into ``--output`` with the command line (a new run of the same command replaces its table).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import torch
import tyro

from openpi.conversion.rules import convert_params
from openpi.models.batch import IMAGE_KEYS
from openpi.models.observation import random_observation
from openpi.models.orbax_params import flatten_params
from openpi.models.pi0_config import Pi0Config, mid_config, tiny_config
from openpi.models_jax import params as jax_params
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0 import Pi0
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.shared import results_file

SIZES = {"tiny": tiny_config(), "mid": mid_config(), "full": Pi0Config(pi05=True)}
BUDGETS: tuple[float | None, ...] = (None, 0.25, 0.1)


@dataclasses.dataclass
class Args:
    sizes: tuple[str, ...] = ("tiny", "mid")
    dtype: str = "float32"
    repeats: int = 5
    prompt_tokens: int = 200
    valid_prompt_tokens: int = 20
    torch_compile: bool = False
    """Also time ``torch.compile(sample_actions)`` (inductor; compiling takes minutes per graph on a CPU)."""
    output: Path = Path(__file__).parent / "results" / "jax_vs_pytorch.md"


def _models(config: Pi0Config) -> dict[str, tuple[Pi0, PI0Pytorch]]:
    """``{"unpruned": ..., "pruned": ...}``: (JAX, PyTorch) models of one set of weights, shared, not copied."""
    rng = np.random.default_rng(0)
    flat = {
        # Zero-initialised leaves (biases, π0.5's adaRMS layers, whose zero gates would hide the prefix) get small
        # random values, so that the actions depend on every input and the agreement column means something.
        path: np.array(leaf) if np.any(leaf) else rng.normal(0.0, 0.02, leaf.shape).astype(np.float32)
        for path, leaf in flatten_params(jax_params.init_params(config, seed=0)).items()
    }
    params = jax_params.nest(flat)
    state = {key: torch.from_numpy(np.array(value)) for key, value in convert_params(flat, config)}
    models = {}
    for name, pruning in (("unpruned", False), ("pruned", True)):
        variant = dataclasses.replace(config, token_pruning_enabled=pruning)
        with torch.device("meta"):
            torch_model = PI0Pytorch(variant)
        torch_model.load_state_dict(state, strict=True, assign=True)
        if config.dtype == "bfloat16":
            torch_model.to_bfloat16()
        models[name] = (Pi0(variant, params), torch_model.eval())
    return models


def _timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    actions = run()
    return (time.perf_counter() - start) * 1e3, actions


def _runners(jax_model: Pi0, torch_model: PI0Pytorch, obs, noise, compile_torch: bool) -> dict[str, Callable]:
    jax_obs = JaxObservation.from_dict(obs.to_dict())
    runners: dict[str, Callable[[], np.ndarray]] = {
        "PyTorch eager": lambda: torch_model.sample_actions(obs, noise=noise).numpy(),
        "JAX jit": lambda: np.asarray(jax_model.sample_actions(jax.random.key(0), jax_obs, noise=noise.numpy())),
    }
    if compile_torch:
        compiled = torch.compile(torch_model.sample_actions)
        runners["PyTorch torch.compile"] = lambda: compiled(obs, noise=noise).numpy()
    return runners


def bench_size(name: str, args: Args) -> list[str]:
    config = dataclasses.replace(SIZES[name], dtype=args.dtype, max_token_len=args.prompt_tokens)
    models = _models(config)
    obs = random_observation(config, num_cameras=len(IMAGE_KEYS), valid_prompt_tokens=args.valid_prompt_tokens)
    noise = torch.randn(1, config.action_horizon, config.action_dim, generator=torch.Generator().manual_seed(0))
    variants = {}
    for ratio in BUDGETS:
        jax_model, torch_model = models["unpruned" if ratio is None else "pruned"]
        label = "unpruned" if ratio is None else f"keep {ratio:.0%}"
        for key, run in _runners(jax_model, torch_model, obs, noise, args.torch_compile).items():
            variants[(label, key)] = (ratio, jax_model, torch_model, run)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    actions: dict[tuple[str, str], np.ndarray] = {}
    with torch.inference_mode():
        for _ in range(args.repeats + 1):  # round-robin; the first round warms up (and compiles)
            for key, (ratio, jax_model, torch_model, run) in variants.items():
                if ratio is not None:
                    jax_model.keep_ratio = ratio
                    torch_model.set_token_pruner_keep_ratio(ratio)
                elapsed, actions[key] = _timed(run)
                times[key].append(elapsed)
    base = statistics.median(times[("unpruned", "PyTorch eager")][1:])
    rows = []
    for (label, implementation), elapsed in times.items():
        ms = statistics.median(elapsed[1:])
        reference = actions[(label, "PyTorch eager")]
        diff = np.linalg.norm(actions[(label, implementation)] - reference) / np.linalg.norm(reference)
        rows.append(
            f"| {name} | {label} | {implementation} | {elapsed[0]:.0f} | {ms:.1f} | {ms / base:.3f} | {diff:.1e} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(args: Args) -> None:
    command = "uv run scripts/bench/bench_jax.py " + " ".join(sys.argv[1:])
    header = [
        f"## {time.strftime('%Y-%m-%d')} — {jax.devices()[0].device_kind} ({torch.get_num_threads()} torch threads), "
        f"{args.dtype}, batch 1, 3 cameras, prompt padded to {args.prompt_tokens} tokens "
        f"({args.valid_prompt_tokens} valid), 10 denoising steps, median of {args.repeats}",
        "",
        "```",
        command,
        "```",
        "",
        "| size | budget | implementation | first call (ms) | sample_actions (ms) | ratio to unpruned PyTorch eager "
        "| actions vs PyTorch eager (rel.) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [row for size in args.sizes for row in bench_size(size, args)]
    results_file.write_run(args.output, command, [*header, *rows])


if __name__ == "__main__":
    main(tyro.cli(Args))
