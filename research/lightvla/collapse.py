"""Does the pruner collapse? Trains the tiny LightVLA config with and without patch centring and compares.

    uv run python -m research.lightvla.collapse --steps 150 --seeds 0 1

For each variant and seed: trains ``debug_pi05_lightvla`` with LightVLA's union-of-argmaxes selection (the collapse
this studies; the config itself trains on a fixed budget) on the embedded dataset (CPU, no wandb), then on held-out
batches measures the deterministic kept-token count of the eval policy and the action error of ``sample_actions``
pruned vs with every patch kept (same weights). Appends a Markdown table with the command to ``--output``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import tyro

from openpi.models_pytorch import preprocessing
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.training import config as _config
from openpi.training import data_loader, trainer

HELD_OUT_START = 100_000  # a step index no training run reaches: fresh batches


@dataclasses.dataclass
class Args:
    steps: int = 150
    seeds: tuple[int, ...] = (0,)
    eval_batches: int = 4
    output: Path = Path(__file__).parent / "results" / "collapse.md"


def _train(center: bool, seed: int, steps: int, workdir: Path) -> tuple[PI0Pytorch, _config.TrainConfig, dict]:
    base = _config.get_config("debug_pi05_lightvla")
    config = dataclasses.replace(
        base,
        exp_name=f"center{int(center)}_seed{seed}",
        seed=seed,
        model=dataclasses.replace(
            base.model,
            token_prune_center_patches=center,
            token_prune_budget_training=False,
            token_prune_keep_ratio=None,
            token_prune_gate_dropped_patches=False,
        ),
        num_train_steps=steps,
        lr_schedule=dataclasses.replace(base.lr_schedule, decay_steps=steps),
        log_interval=max(1, steps // 3),
        save_interval=steps,
        wandb_enabled=False,
        checkpoint_base_dir=str(workdir),
    )
    result = trainer.train(config)
    return result.model.eval(), config, result.history[-1]


@torch.no_grad()
def _evaluate(model: PI0Pytorch, config: _config.TrainConfig, keep_ratio: float | None, batches: int):
    """Mean kept image tokens and action MSE (robot dims, normalised space) over held-out batches."""
    model.set_token_pruner_keep_ratio(keep_ratio)
    model.set_token_pruner_collect_stats(True)
    resolution = (model.config.vision_config.image_size,) * 2
    kept, errors = [], []
    for obs, actions in data_loader.create_data_loader(config, start_step=HELD_OUT_START, num_batches=batches):
        obs = preprocessing.preprocess_observation(obs, train=False, image_resolution=resolution)
        predicted = model.sample_actions(obs, noise=torch.zeros_like(actions))
        errors.append(float(((predicted - actions)[..., :7] ** 2).mean()))
        kept.append(model.get_token_pruning_stats()["kept_tokens_overall_mean"])
    return statistics.mean(kept), statistics.mean(errors)


def main(args: Args) -> None:
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for center in (False, True):
            for seed in args.seeds:
                torch.manual_seed(seed)
                model, config, last = _train(center, seed, args.steps, Path(workdir))
                kept, mse_pruned = _evaluate(model, config, None, args.eval_batches)
                valid, mse_all = _evaluate(model, config, 1.0, args.eval_batches)
                rows.append(
                    f"| {'centred' if center else 'spec (no centring)'} | {seed} | {last['loss']:.4f} "
                    f"| {last['prune/argmax_top1_share_mean']:.2f} | {last['prune/query_cosine_before_norm_mean']:.2f} "
                    f"| {kept:.1f} / {valid:.0f} | {mse_pruned:.4f} | {mse_all:.4f} |"
                )
                print(rows[-1], flush=True)
    header = [
        f"## {time.strftime('%Y-%m-%d')} — debug_pi05_lightvla, {args.steps} steps, CPU",
        "",
        "```",
        "uv run python -m research.lightvla.collapse " + " ".join(sys.argv[1:]),
        "```",
        "",
        "| scoring | seed | final train loss | top-1 vote share | query cosine | eval kept / valid patches "
        "| action MSE pruned | action MSE all patches |",
        "|---|---|---|---|---|---|---|---|",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("a") as f:
        f.write("\n".join([*header, *rows, "", ""]))


if __name__ == "__main__":
    main(tyro.cli(Args))
