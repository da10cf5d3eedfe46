"""Real-time chunking closed loop under inference delay: sync vs naive async vs guided vs trained RTC.

    uv run python -m research.rtc.driver --seeds 0 1 2 --episodes 100 --steps 2000

Trains the two policies of :mod:`research.rtc.arms` once (training seed 0) with the package's trainer, then evaluates
every execution arm at every simulated delay on each evaluation seed's held-out scenes
(:mod:`openpi.evaluation.closed_loop` with ``--execution`` and ``--inference-delay``). Resumable: each trained policy
leaves ``train_{arm}.json`` under ``--work-dir`` and each (execution arm, delay, seed) result a JSON file under
``--results-dir``; what exists is not redone. Writes the Markdown table to ``--output`` and the plot to ``--plot``
(:mod:`research.rtc.report`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import tyro

from research.rtc import report
from research.rtc.arms import DATA, DELAYS, EXECUTION_ARMS, REPLAN_STEPS, TRAINING_ARMS
from research.training import train_policy

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results"
COMMAND = "uv run python -m research.rtc.driver"


@dataclasses.dataclass
class Args:
    seeds: tuple[int, ...] = (0, 1, 2)
    """Evaluation seeds (held-out scene streams); the policies are trained once, with training seed 0."""
    episodes: int = 100
    steps: int = 2000
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


def train_config(arm: str, args: Args):
    """The package's ``pi05_shapes`` config with ``arm``'s model and the experiment's data, under the work dir."""
    from openpi.training import config as _config

    config = _config.get_config("pi05_shapes")
    return dataclasses.replace(
        config,
        exp_name=f"rtc_{arm}",
        seed=0,
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


def _train(arm: str, args: Args, threads: int) -> dict[str, Any]:
    """Trains one policy (in a worker process): :func:`research.training.train_policy`."""
    return train_policy(train_config(arm, args), threads)


def train_all(args: Args) -> dict[str, dict[str, Any]]:
    """Trains the policies without a ``train_{arm}.json`` yet, ``args.jobs`` at a time; returns every record."""
    pending = [arm for arm in TRAINING_ARMS if not (args.work_dir / f"train_{arm}.json").is_file()]
    threads = max(1, multiprocessing.cpu_count() // args.jobs)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {pool.submit(_train, arm, args, threads): arm for arm in pending}
        for future in concurrent.futures.as_completed(futures):
            arm = futures[future]
            (args.work_dir / f"train_{arm}.json").write_text(json.dumps(future.result()))
            print(f"trained {arm}: {future.result()}", flush=True)
    return {arm: json.loads((args.work_dir / f"train_{arm}.json").read_text()) for arm in TRAINING_ARMS}


def main(args: Args) -> None:
    logging.basicConfig(level=logging.WARNING)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        trained = train_all(args)
        if args.train_only:
            return
        evaluate_all(args, trained)
    command = " ".join([COMMAND, *(a for a in sys.argv[1:] if a != "--report-only")])
    report.write(args.results_dir, args.output, args.plot, command)


def evaluate_all(args: Args, trained: dict[str, dict[str, Any]]) -> None:
    """Evaluates every (execution arm, delay, seed) without a result file yet, one policy load per trained policy;
    each result is written as soon as it exists."""
    import torch

    from openpi.evaluation import closed_loop

    torch.set_num_threads(args.eval_threads)
    policies: dict[str, Any] = {}
    for seed in args.seeds:
        for delay in args.delays:
            for arm in args.arms:
                path = result_path(args, arm, delay, seed)
                if path.is_file():
                    continue
                spec = EXECUTION_ARMS[arm]
                config = train_config(spec.weights, args)
                eval_args = closed_loop.Args(
                    policy=closed_loop.PolicyArgs(config.name, trained[spec.weights]["checkpoint"]),
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
                path.write_text(json.dumps({**summary, **{f"train_{k}": v for k, v in trained[spec.weights].items()}}))
                print(f"{arm} d={delay} seed {seed}: success {summary['success_rate']:.2f}", flush=True)


def result_path(args: Args, arm: str, delay: int, seed: int) -> Path:
    return args.results_dir / f"{arm}_d{delay}_seed{seed}.json"


if __name__ == "__main__":
    main(tyro.cli(Args))
