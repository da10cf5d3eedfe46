"""JAX vs PyTorch training, in one run: both trainers' loss curves on the quickstart config, and the training step
time at tiny and mid size on shared weights.

    uv run scripts/bench/bench_jax_train.py                      # CPU: the quickstart curves, tiny + mid steps

Part 1 trains ``--config`` (default the README's ``debug_pi05_lightvla``: embedded dataset, 300 steps) with
``trainer.train`` and ``jax_trainer.train`` (same seed, data order and schedule; each framework's own noise draws)
and writes both logged loss curves to the table and to ``--plot``. Part 2 times one optimizer step of each
framework on a fixed batch (pruning on; the prompt padded to ``--prompt-tokens`` with ``--valid-prompt-tokens``
valid; PyTorch with its default deduplicated pruned training, JAX on all N rows), round-robin, median of
``--repeats`` after one warm-up step (JAX's includes compiling). Results are written into
``--output`` (a new run of the same command replaces its table).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
import tyro

from openpi.conversion.rules import convert_params
from openpi.models.observation import random_observation
from openpi.models.orbax_params import flatten_params
from openpi.models.pi0_config import mid_config, tiny_config
from openpi.models_jax import params as jax_params
from openpi.models_jax.observation import JaxObservation
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.shared import results_file
from openpi.training import config as _config
from openpi.training import jax_trainer, memory_profile, trainer

REPO = Path(__file__).resolve().parents[2]
SIZES = {"tiny": tiny_config, "mid": mid_config}


@dataclasses.dataclass
class Args:
    config: str = "debug_pi05_lightvla"
    sizes: tuple[str, ...] = ("tiny", "mid")
    batch_size: int = 8
    repeats: int = 5
    prompt_tokens: int = 200
    valid_prompt_tokens: int = 20
    output: Path = Path(__file__).parent / "results" / "jax_vs_pytorch_training.md"
    plot: Path = REPO / "docs" / "jax_vs_pytorch_training.png"


def loss_curves(args: Args) -> list[str]:
    """Trains the config with both trainers; returns the table rows and draws the plot."""
    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(
            _config.get_config(args.config), exp_name="bench", checkpoint_base_dir=tmp, wandb_enabled=False
        )
        start = time.perf_counter()
        torch_history = trainer.train(config).history
        torch_minutes = (time.perf_counter() - start) / 60
        start = time.perf_counter()
        jax_history = jax_trainer.train(dataclasses.replace(config, exp_name="bench_jax")).history
        jax_minutes = (time.perf_counter() - start) / 60
    rows = [
        f"| {int(t['step'])} | {t['loss']:.4f} | {j['loss']:.4f} | {t.get('prune/kept_tokens_overall_mean', 0):.1f} "
        f"| {j.get('prune/kept_tokens_overall_mean', 0):.1f} |"
        for t, j in zip(torch_history, jax_history, strict=True)
        if int(t["step"]) % 50 == 0 or t is torch_history[-1]
    ]
    rows.append(f"| wall time | {torch_minutes:.1f} min | {jax_minutes:.1f} min | | |")
    _plot(torch_history, jax_history, args)
    return rows


def _plot(torch_history: list[dict], jax_history: list[dict], args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for history, label in ((torch_history, "PyTorch trainer"), (jax_history, "JAX trainer")):
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], label=label)
    ax.set(yscale="log", xlabel="step", ylabel="training loss (window mean)", title=f"{args.config}: both trainers")
    ax.legend()
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    plt.close(fig)


def step_times(size: str, args: Args) -> list[str]:
    model_config = SIZES[size](token_pruning_enabled=True, max_token_len=args.prompt_tokens)
    config = dataclasses.replace(_config.get_config(args.config), model=model_config, batch_size=args.batch_size)
    params = jax_params.init_params(model_config, seed=0)
    flat = {path: np.array(leaf) for path, leaf in flatten_params(params).items()}
    torch_model = PI0Pytorch(model_config)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in convert_params(flat, model_config)}, strict=True)
    torch_model.train()
    optimizer = config.optimizer.build(torch_model.parameters(), lr=1e-5)
    observation = random_observation(model_config, args.batch_size, valid_prompt_tokens=args.valid_prompt_tokens)
    actions = torch.randn(args.batch_size, model_config.action_horizon, model_config.action_dim)

    frozen: frozenset[str] = frozenset()
    state = jax_trainer.init_state(config, params, frozen)
    step = jax.jit(
        functools.partial(jax_trainer.train_step, config=config, frozen=frozen, collect_stats=False),
        donate_argnums=(0,),
    )
    obs = JaxObservation.from_dict(observation.to_dict()).trim_prompt_padding(model_config.prompt_trim_multiple)
    jax_actions = actions.numpy()
    times: dict[str, list[float]] = {"PyTorch": [], "JAX jit": []}
    for index in range(args.repeats + 1):
        start = time.perf_counter()
        memory_profile.train_step(torch_model, optimizer, observation, actions, index)
        times["PyTorch"].append(time.perf_counter() - start)
        start = time.perf_counter()
        state, metrics = step(state, obs, jax_actions, jax.random.key(index), np.float32(0.5))
        jax.block_until_ready(metrics["loss"])
        times["JAX jit"].append(time.perf_counter() - start)
    base = statistics.median(times["PyTorch"][1:])
    return [
        f"| {size} | {name} | {values[0] * 1e3:.0f} | {statistics.median(values[1:]) * 1e3:.0f} "
        f"| {statistics.median(values[1:]) / base:.2f} |"
        for name, values in times.items()
    ]


def main(args: Args) -> None:
    command = "uv run scripts/bench/bench_jax_train.py " + " ".join(sys.argv[1:])
    device = f"{jax.devices()[0].device_kind}, {torch.get_num_threads()} torch threads"
    lines = [
        f"## {time.strftime('%Y-%m-%d')} — {device}",
        "",
        "```",
        command,
        "```",
        "",
        f"### Loss curves: `{args.config}`, both trainers (plot: `{args.plot.relative_to(REPO)}`)",
        "",
        "| step | PyTorch loss | JAX loss | PyTorch kept patches | JAX kept patches |",
        "|---|---|---|---|---|",
        *loss_curves(args),
        "",
        f"### Training step, batch {args.batch_size}, pruning on, prompt padded to {args.prompt_tokens} "
        f"({args.valid_prompt_tokens} valid), median of {args.repeats}",
        "",
        "| size | framework | first step (ms) | step (ms) | ratio to PyTorch |",
        "|---|---|---|---|---|",
        *[row for size in args.sizes for row in step_times(size, args)],
    ]
    print("\n".join(lines), flush=True)
    results_file.write_run(args.output, command, lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
