"""Does learned pruning keep a policy's sight? Closed-loop success on held-out shapes scenes, with the controls.

    uv run python -m research.lightvla.driver --seeds 0 1 2 --episodes 200 --jobs 2

Trains each training arm of :mod:`research.lightvla.arms` per seed with the package's trainer (``pi05_shapes`` /
``pi05_shapes_lightvla`` with some fields replaced), then evaluates every evaluation arm that uses those weights
closed loop on the same held-out scenes (:mod:`openpi.evaluation.closed_loop`; the withheld-target controls through
:mod:`research.lightvla.withholding`). Resumable: each (evaluation arm, seed) result is a JSON file under
``--results-dir``; checkpoints live under ``--work-dir``, and a training arm is (re)trained only while an evaluation
that needs its weights is missing. Writes the Markdown table to ``--output`` and the plot to ``--plot``
(:mod:`research.lightvla.report`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import tyro

from openpi.envs.shapes import ActionSpace
from research.lightvla import report
from research.lightvla.arms import CORE_TRAINING_ARMS, EVAL_ARMS, TRAINING_ARMS
from research.training import record_path, train_in_workers, train_policy

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results"
COMMAND = "uv run python -m research.lightvla.driver"


@dataclasses.dataclass
class Args:
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = CORE_TRAINING_ARMS
    """Training arms to run (their evaluation arms follow)."""
    episodes: int = 200
    steps: int | None = None
    """Training steps (default: the config's)."""
    finetune_steps: int | None = None
    """Training steps of an arm that starts from another arm's weights (times its ``finetune_multiple``); default:
    its config's (``pi05_shapes_lightvla``: the registered fine-tuning)."""
    objects: int | None = None
    """Objects per scene (default: the config's 3-4); 1 asks only whether the policy can localise."""
    num_episodes: int | None = None
    """Training scenes (default: the config's)."""
    action_space: ActionSpace | None = None
    """What the actions encode (default: the config's, ``delta``, the step, saturated far from the target);
    ``position``: the point to move to, so every action needs the target's exact position (see ``ShapesTask``)."""
    vision_variant: str | None = None
    """The vision tower of every arm (default: the config's ``tiny_112``, two self-attention layers that mix the
    patches); ``hidden_size=32,num_hidden_layers=0,num_attention_heads=2,intermediate_size=64,image_size=112``: none,
    so each patch token holds only its own pixels (and position) and only the target's tokens show where it is."""
    ema_decay: float | None = None
    """EMA of the weights (evaluated in place of the raw weights); default: the config's (none)."""
    jobs: int = 2
    """Trainings run in parallel, each with cores // jobs threads."""
    report_only: bool = False
    """Rewrite the table and the plot from the results already in ``--results-dir``; train and evaluate nothing."""
    work_dir: Path = REPO / "outputs" / "multi_object"
    results_dir: Path = RESULTS / "multi_object"
    output: Path = RESULTS / "multi_object.md"
    plot: Path = RESULTS / "multi_object.png"

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in TRAINING_ARMS]
        if unknown:
            raise ValueError(
                f"Unknown training arms {unknown} (evaluation arms follow their training arm's weights); "
                f"training arms: {', '.join(TRAINING_ARMS)}"
            )
        if self.vision_variant is not None:
            from openpi.models import variants

            variants.get_siglip_config(self.vision_variant)  # a bad variant fails here, before any training


def train_config(arm: str, seed: int, args: Args):
    """The package's training config of ``arm`` for ``seed``: its fields replaced, checkpoints under the work dir."""
    from openpi.training import config as _config

    spec = TRAINING_ARMS[arm]
    config = _config.get_config(spec.config)
    model_overrides, data_overrides = dict(spec.model), dict(spec.data)
    if args.objects is not None:
        data_overrides |= {"min_objects": args.objects, "max_objects": args.objects}
    if args.num_episodes is not None:
        data_overrides["num_episodes"] = args.num_episodes
    if args.action_space is not None:
        data_overrides["action_space"] = args.action_space
    if args.vision_variant is not None:
        model_overrides["vision_variant"] = args.vision_variant
    if spec.warm_start:
        steps = (args.finetune_steps or config.num_train_steps) * spec.finetune_multiple
    else:
        steps = args.steps or config.num_train_steps
    return dataclasses.replace(
        config,
        pytorch_weight_path=_warm_start_weights(arm, seed, args),
        exp_name=f"{arm}_seed{seed}",
        seed=seed,
        model=dataclasses.replace(config.model, **model_overrides),
        data=dataclasses.replace(config.data, **data_overrides),
        num_train_steps=steps,
        ema_decay=args.ema_decay if args.ema_decay is not None else config.ema_decay,
        lr_schedule=dataclasses.replace(config.lr_schedule, decay_steps=steps),
        save_interval=min(steps, 500),
        keep_period=None,
        wandb_enabled=False,
        checkpoint_base_dir=str(args.work_dir / "checkpoints"),
        assets_base_dir=str(args.work_dir / "assets"),
        resume=True,  # a training cut off continues from its last checkpoint
        allow_random_init=config.allow_random_init or spec.warm_start is None,  # research arms trained from scratch
    )


def _warm_start_weights(arm: str, seed: int, args: Args) -> str | None:
    """The final checkpoint of the arm that ``arm`` starts from (same seed), or None for an arm trained from scratch."""
    base = TRAINING_ARMS[arm].warm_start
    if base is None:
        return None
    config = train_config(base, seed, args)
    return str(Path(config.checkpoint_dir) / str(config.num_train_steps))


def _train(arm: str, seed: int, threads: int, args: Args) -> dict[str, Any]:
    """Trains one arm (in a worker process): :func:`research.training.train_policy`."""
    return train_policy(train_config(arm, seed, args), threads)


def evaluate(arm: str, seed: int, trained: dict[str, dict], args: Args) -> dict[str, Any]:
    """Evaluates one evaluation arm on ``seed``'s held-out scenes; its summary with its training's record."""
    from openpi.evaluation import closed_loop
    from research.lightvla.withholding import evaluate_withholding

    spec = EVAL_ARMS[arm]
    config = train_config(spec.config, seed, args)
    controls = spec.options.get("random_keep") or spec.withhold_target
    swap = 50 if config.model.token_pruning_enabled and not controls else 0
    eval_args = closed_loop.Args(
        policy=closed_loop.PolicyArgs(config.name, trained[spec.weights]["checkpoint"]),
        episodes=args.episodes,
        seed=seed,
        prompt_swap=swap,
        **spec.options,
    )
    policy = closed_loop.load_policy(eval_args, config)
    if spec.withhold_target is None:
        summary = closed_loop.evaluate(eval_args, config, policy)
    else:
        summary = evaluate_withholding(eval_args, config, policy, only_when_far=spec.withhold_target == "far")
    return {**summary, **{f"train_{k}": v for k, v in trained[spec.weights].items() if k != "checkpoint"}}


def main(args: Args) -> None:
    logging.basicConfig(level=logging.WARNING)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        trained = _train_all(args)
        for seed in args.seeds:
            for arm in _eval_arms(args):
                path = _eval_path(args, arm, seed)
                if not path.is_file():
                    result = evaluate(arm, seed, trained[seed], args)
                    path.write_text(json.dumps(result, indent=1))
                    print(f"{arm} seed {seed}: success {result['success_rate']:.2f}", flush=True)
    command = " ".join([COMMAND, *(a for a in sys.argv[1:] if a != "--report-only")])
    report.write(args.results_dir, args.output, args.plot, command)


def _train_all(args: Args) -> dict[int, dict[str, dict]]:
    """Trains every (arm, seed) still needed, ``args.jobs`` at a time, each warm-started arm once its base is trained;
    returns all training records."""
    ready = functools.partial(_trained_base, args)
    train_in_workers(pending_trainings(args), functools.partial(_train, args=args), args.work_dir, args.jobs, ready)
    return {
        seed: {
            arm: json.loads(path.read_text())
            for arm in args.arms
            if (path := record_path(args.work_dir, arm, seed)).is_file()
        }
        for seed in args.seeds
    }


def _trained_base(args: Args, arm: str, seed: int) -> bool:
    """Whether the arm ``arm`` warm-starts from has finished training for ``seed`` (trivially for none)."""
    return _trained(args, TRAINING_ARMS[arm].warm_start, seed)


def pending_trainings(args: Args) -> list[tuple[str, int]]:
    """The (arm, seed) trainings still needed; a warm start's untrained bases, down its chain, come before it (asked
    for or not)."""
    wanted = [
        (arm, seed)
        for seed in args.seeds
        for arm in args.arms
        if not _trained(args, arm, seed) and _needs_weights(args, arm, seed)
    ]
    bases = [base for arm, seed in wanted for base in _untrained_bases(args, arm, seed)]
    return list(dict.fromkeys([*bases, *wanted]))


def _untrained_bases(args: Args, arm: str, seed: int) -> list[tuple[str, int]]:
    """The untrained arms ``arm`` warm-starts from for ``seed``, directly or not, the first to train first."""
    bases = []
    while (arm := TRAINING_ARMS[arm].warm_start) is not None and not _trained(args, arm, seed):
        bases.insert(0, (arm, seed))
    return bases


def _trained(args: Args, arm: str | None, seed: int) -> bool:
    """Whether ``arm`` has finished training for ``seed`` (None, no arm: trivially)."""
    return arm is None or record_path(args.work_dir, arm, seed).is_file()


def _eval_arms(args: Args) -> list[str]:
    return [arm for arm, spec in EVAL_ARMS.items() if spec.weights in args.arms]


def _eval_path(args: Args, arm: str, seed: int) -> Path:
    return args.results_dir / f"{arm}_seed{seed}.json"


def _needs_weights(args: Args, training_arm: str, seed: int) -> bool:
    """Whether an evaluation that uses ``training_arm``'s weights for ``seed`` is still missing."""
    return any(
        EVAL_ARMS[arm].weights == training_arm and not _eval_path(args, arm, seed).is_file() for arm in _eval_arms(args)
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
