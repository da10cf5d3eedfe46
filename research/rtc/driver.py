"""Real-time chunking closed loop under inference delay: sync vs naive async vs guided vs trained RTC.

    uv run python -m research.rtc.driver --seeds 0 1 2 --episodes 100

Each seed is a training seed: it trains its own two policies of :mod:`research.rtc.arms` with the package's trainer
(config seed = the seed), then evaluates every execution arm at every simulated delay on that seed's held-out scenes
(:mod:`openpi.evaluation.closed_loop` with ``--execution`` and ``--inference-delay``, evaluation seed = the seed).
Resumable: each trained policy leaves ``train_{arm}_seed{seed}.json`` under ``--work-dir`` and each (execution arm,
delay, seed) result a JSON file under ``--results-dir``; what exists is not redone, and a policy is trained only while
an evaluation that needs it is missing. Results of another training (other steps, or not trained on their own seed)
are refused rather than resumed from. Writes the Markdown table to ``--output`` and the plot to ``--plot``
(:mod:`research.rtc.report`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import tyro

from research.rtc import report
from research.rtc.arms import DATA, DELAYS, EXECUTION_ARMS, REPLAN_STEPS, TRAINING_ARMS
from research.training import record_path, train_in_workers, train_policy

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results"
COMMAND = "uv run python -m research.rtc.driver"


@dataclasses.dataclass
class Args:
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds: each trains its own policies and evaluates them on its own held-out scenes."""
    episodes: int = 100
    steps: int = 6000
    """Training steps of each policy."""
    delays: tuple[int, ...] = DELAYS
    arms: tuple[str, ...] = tuple(EXECUTION_ARMS)
    jobs: int = 2
    """Trainings run in parallel, each with cores // jobs threads."""
    eval_threads: int = 1
    """Torch threads of the evaluations (run several drivers on disjoint ``--seeds`` to use more cores)."""
    train_only: bool = False
    """Train the policies and stop."""
    report_only: bool = False
    """Rewrite the table and the plot from the results already in ``--results-dir``."""
    work_dir: Path = REPO / "outputs" / "rtc"
    results_dir: Path = RESULTS / "shapes_delay"
    output: Path = RESULTS / "shapes_delay.md"
    plot: Path = REPO / "docs" / "rtc_shapes_delay.png"

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in EXECUTION_ARMS]
        if unknown:
            raise ValueError(f"Unknown execution arms {unknown}; arms: {', '.join(EXECUTION_ARMS)}")


def train_config(arm: str, seed: int, args: Args):
    """The package's ``pi05_shapes`` config with ``arm``'s model, the experiment's data and ``seed``, under the work
    dir."""
    from openpi.training import config as _config

    config = _config.get_config("pi05_shapes")
    return dataclasses.replace(
        config,
        exp_name=f"rtc_{arm}_seed{seed}",
        seed=seed,
        model=dataclasses.replace(config.model, **TRAINING_ARMS[arm]),
        data=dataclasses.replace(config.data, **DATA),
        num_train_steps=args.steps,
        lr_schedule=dataclasses.replace(config.lr_schedule, decay_steps=args.steps),
        save_interval=min(args.steps, 500),
        keep_period=None,
        wandb_enabled=False,
        checkpoint_base_dir=str(args.work_dir / "checkpoints"),
        assets_base_dir=str(args.work_dir / "assets"),
        resume=True,  # a training cut off continues from its last checkpoint
    )


def _train(arm: str, seed: int, threads: int, args: Args) -> dict[str, Any]:
    """Trains one policy (in a worker process): :func:`research.training.train_policy`."""
    return train_policy(train_config(arm, seed, args), threads)


def pending_trainings(args: Args) -> list[tuple[str, int]]:
    """The (training arm, seed) pairs without a record whose weights an evaluation still missing needs."""
    return [
        (weights, seed)
        for seed in args.seeds
        for weights in TRAINING_ARMS
        if not record_path(args.work_dir, weights, seed).is_file() and _needs_weights(args, weights, seed)
    ]


def _needs_weights(args: Args, weights: str, seed: int) -> bool:
    return any(
        EXECUTION_ARMS[arm].weights == weights and not result_path(args, arm, delay, seed).is_file()
        for arm in args.arms
        for delay in args.delays
    )


def train_all(args: Args) -> dict[int, dict[str, dict[str, Any]]]:
    """Trains the pending policies, ``args.jobs`` at a time; returns every seed's training records."""
    train_in_workers(pending_trainings(args), functools.partial(_train, args=args), args.work_dir, args.jobs)
    return {
        seed: {
            weights: json.loads(path.read_text())
            for weights in TRAINING_ARMS
            if (path := record_path(args.work_dir, weights, seed)).is_file()
        }
        for seed in args.seeds
    }


def foreign_results(args: Args) -> list[str]:
    """The result files in ``--results-dir`` that another training produced: other training steps than ``--steps``,
    or a policy not trained with its own evaluation seed."""
    return [
        path.name
        for path, result in report.read_results(args.results_dir)
        if result.get("train_steps") != args.steps or result.get("train_seed") != report.seed_of(path)
    ]


def main(args: Args) -> None:
    logging.basicConfig(level=logging.WARNING)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        foreign = foreign_results(args)
        if foreign:
            raise ValueError(
                f"{args.results_dir} holds results of another training ({', '.join(foreign)}), not {args.steps} steps "
                "trained on each result's seed; remove them or pass another --results-dir"
            )
        trained = train_all(args)
        if args.train_only:
            return
        evaluate_all(args, trained)
    command = " ".join([COMMAND, *(a for a in sys.argv[1:] if a != "--report-only")])
    report.write(args.results_dir, args.output, args.plot, command)


def evaluate_all(args: Args, trained: dict[int, dict[str, dict[str, Any]]]) -> None:
    """Evaluates every (execution arm, delay, seed) without a result file yet with that seed's policies, one load per
    policy; each result is written as soon as it exists."""
    import torch

    from openpi.evaluation import closed_loop

    torch.set_num_threads(args.eval_threads)
    for seed in args.seeds:
        policies: dict[str, Any] = {}  # this seed's, loaded on first use
        for delay in args.delays:
            for arm in args.arms:
                path = result_path(args, arm, delay, seed)
                if path.is_file():
                    continue
                spec = EXECUTION_ARMS[arm]
                record = trained[seed][spec.weights]
                config = train_config(spec.weights, seed, args)
                eval_args = closed_loop.Args(
                    policy=closed_loop.PolicyArgs(config.name, record["checkpoint"]),
                    episodes=args.episodes,
                    seed=seed,
                    replan_steps=REPLAN_STEPS,
                    inference_delay=delay,
                    run_async=spec.execution == "async",
                    rtc=spec.rtc,
                )
                if spec.weights not in policies:
                    policies[spec.weights] = closed_loop.load_policy(eval_args, config)
                torch.manual_seed(seed)  # each arm samples from the same noise stream
                start = time.perf_counter()
                summary = closed_loop.evaluate(eval_args, config, policies[spec.weights])
                summary["eval_minutes"] = (time.perf_counter() - start) / 60
                path.write_text(json.dumps({**summary, **{f"train_{k}": v for k, v in record.items()}}))
                print(f"{arm} d={delay} seed {seed}: success {summary['success_rate']:.2f}", flush=True)


def result_path(args: Args, arm: str, delay: int, seed: int) -> Path:
    return args.results_dir / f"{arm}_d{delay}_seed{seed}.json"


if __name__ == "__main__":
    main(tyro.cli(Args))
