"""Closed-loop success on the scenes a policy trained on next to held-out scenes, and how its failures end: tells a
policy that memorised its training scenes from one that never learned to find the named object.

    uv run python -m research.lightvla.train_scenes \
        --checkpoint outputs/mixing_tower/checkpoints/pi05_shapes/unpruned_seed0/8000

A training scene is replayed from the dataset's own random stream (the generator state at the start of each recorded
episode), so the policy starts from exactly the scene and effector position it was trained on. A failure that ends
before the step limit closed the gripper over another object (a wrong grasp); the rest ran out of steps.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import tyro

from openpi.envs import rollout
from openpi.envs.shapes import ShapesEnv
from openpi.envs.shapes_dataset import generate_episode
from openpi.evaluation import closed_loop
from openpi.training import config as _config


@dataclasses.dataclass
class Args:
    checkpoint: Path
    config: str = "pi05_shapes"
    episodes: int = 100
    seed: int = 0
    """Held-out evaluation seed."""
    output: Path | None = None
    """Also write the two summaries here as JSON."""


def training_scene_starts(spec, episodes: int) -> list[np.random.Generator]:
    """The dataset stream's generator at the start of each of its first ``episodes`` recorded episodes."""
    rng = np.random.default_rng(spec.seed)
    starts = []
    for _ in range(episodes):
        starts.append(copy.deepcopy(rng))
        for _ in generate_episode(rng, spec):  # advances the stream exactly as the recording did
            pass
    return starts


def summary(env: ShapesEnv, results: list[rollout.EpisodeResult]) -> dict:
    """Success with its interval, and the failures split into wrong grasps and running out of steps."""
    failures = [r for r in results if not r.success]
    wrong = sum(r.steps < env.task.max_steps for r in failures)
    successes = sum(r.success for r in results)
    low, high = rollout.wilson_interval(successes, len(results))
    return {
        "success_rate": successes / len(results),
        "ci95": [low, high],
        "wrong_grasp_rate": wrong / len(results),
        "timeout_rate": (len(failures) - wrong) / len(results),
        "episodes": len(results),
    }


def main(args: Args) -> None:
    config = _config.get_config(args.config)
    eval_args = closed_loop.Args(policy=closed_loop.PolicyArgs(args.config, str(args.checkpoint)), seed=args.seed)
    policy = closed_loop.load_policy(eval_args, config)
    env = ShapesEnv(config.data.spec.task)

    def run(start) -> rollout.EpisodeResult:
        return rollout.run_episode(env, policy, start, replan_steps=eval_args.replan_steps)

    trained = summary(env, [run(start) for start in training_scene_starts(config.data.spec, args.episodes)])
    held_out = summary(env, [run(seed) for seed in closed_loop.held_out_seeds(args.episodes, args.seed)])
    result = {"checkpoint": str(args.checkpoint), "training_scenes": trained, "held_out_scenes": held_out}
    print(json.dumps(result, indent=1))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(tyro.cli(Args))
