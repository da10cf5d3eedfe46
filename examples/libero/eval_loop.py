"""The LIBERO evaluation loop, independent of the simulator and of the transport.

The simulator environment, the policy (anything with ``infer(obs) -> {"actions": [H, 7]}``), the image preprocessing
and the video writer are injected, so the loop runs against the real LIBERO ``OffScreenRenderEnv`` (see ``main.py``)
or a fake environment with the same interface (see ``tests/test_libero_example.py``). Written for Python >= 3.8, the
version LIBERO supports.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

# Maximum episode lengths per task suite (steps after the settle phase); the longest demonstrations are shorter.
MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# Gripper-open no-op sent while the objects settle at the start of an episode.
SETTLE_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)

logger = logging.getLogger(__name__)


class LiberoEnv(Protocol):
    """The subset of LIBERO's ``OffScreenRenderEnv`` the loop uses."""

    def reset(self) -> Any: ...

    def set_init_state(self, init_state: np.ndarray) -> dict: ...

    def step(self, action: list) -> tuple[dict, float, bool, dict]: ...

    def close(self) -> None: ...


class Policy(Protocol):
    def infer(self, obs: dict) -> dict: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """One LIBERO task: its language instruction and the initial states of its evaluation episodes."""

    description: str
    init_states: Sequence[np.ndarray]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    max_steps: int
    # Execute this many actions of each predicted chunk before asking the policy again.
    replan_steps: int = 5
    # No-op steps at the start of each episode while objects fall into place.
    num_steps_wait: int = 10
    num_trials_per_task: int = 50


@dataclasses.dataclass
class TaskResult:
    description: str
    episodes: int = 0
    successes: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Converts a unit quaternion ``(x, y, z, w)`` to an axis-angle vector (axis scaled by the angle in radians)."""
    x, y, z, w = (float(v) for v in quat)
    w = min(1.0, max(-1.0, w))
    sin_half = math.sqrt(1.0 - w * w)
    if sin_half < 1e-8:
        return np.zeros(3, dtype=np.float32)
    angle = 2.0 * math.acos(w)
    return np.array([x, y, z], dtype=np.float32) * (angle / sin_half)


def make_request(
    obs: dict, prompt: str, preprocess_image: Callable[[np.ndarray], np.ndarray]
) -> tuple[dict, np.ndarray]:
    """Builds the policy request from a LIBERO observation; also returns the upright agent-view frame for videos.

    LIBERO renders images upside down, so both cameras are rotated by 180 degrees, as in the training data. The state
    is end-effector position (3), orientation as axis-angle (3) and the two gripper finger positions (2).
    """
    agent_view = np.ascontiguousarray(obs["agentview_image"][::-1, ::-1])
    wrist_view = np.ascontiguousarray(obs["robot0_eye_in_hand_image"][::-1, ::-1])
    state = np.concatenate(
        [obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
    ).astype(np.float32)
    request = {
        "observation/image": preprocess_image(agent_view),
        "observation/wrist_image": preprocess_image(wrist_view),
        "observation/state": state,
        "prompt": prompt,
    }
    return request, agent_view


def run_episode(
    env: LiberoEnv,
    policy: Policy,
    task: Task,
    init_state: np.ndarray,
    config: EvalConfig,
    preprocess_image: Callable[[np.ndarray], np.ndarray],
) -> tuple[bool, list]:
    """Runs one episode; returns (success, agent-view frames seen by the policy)."""
    env.reset()
    obs = env.set_init_state(init_state)
    plan: collections.deque = collections.deque()
    frames = []
    for step in range(config.max_steps + config.num_steps_wait):
        if step < config.num_steps_wait:
            obs, _, _, _ = env.step(list(SETTLE_ACTION))
            continue
        request, frame = make_request(obs, task.description, preprocess_image)
        frames.append(frame)
        if not plan:
            plan.extend(_chunk_head(policy.infer(request)["actions"], config.replan_steps))
        obs, _, done, _ = env.step(plan.popleft().tolist())
        if done:
            return True, frames
    return False, frames


def evaluate_suite(
    tasks: Sequence[Task],
    make_env: Callable[[int], LiberoEnv],
    policy: Policy,
    config: EvalConfig,
    preprocess_image: Callable[[np.ndarray], np.ndarray],
    save_video: Callable[[str, list], None],
) -> list[TaskResult]:
    """Evaluates every task for ``config.num_trials_per_task`` episodes (capped by its number of initial states).

    ``make_env(task_index)`` creates the task's environment; ``save_video(name, frames)`` stores a rollout.
    """
    results = []
    for task_index, task in enumerate(tasks):
        env = make_env(task_index)
        result = TaskResult(task.description)
        for episode in range(min(config.num_trials_per_task, len(task.init_states))):
            success, frames = run_episode(env, policy, task, task.init_states[episode], config, preprocess_image)
            result.episodes += 1
            result.successes += int(success)
            save_video(f"task{task_index:02d}_ep{episode:03d}_{'success' if success else 'failure'}", frames)
        env.close()
        logger.info("Task %d (%s): %d/%d", task_index, task.description, result.successes, result.episodes)
        results.append(result)
    return results


def summary(results: Sequence[TaskResult]) -> dict:
    """Per-task and total success rates as a JSON-serialisable dict."""
    episodes = sum(r.episodes for r in results)
    successes = sum(r.successes for r in results)
    return {
        "tasks": [{**dataclasses.asdict(r), "success_rate": r.success_rate} for r in results],
        "episodes": episodes,
        "successes": successes,
        "success_rate": successes / episodes if episodes else 0.0,
    }


def _chunk_head(actions: np.ndarray, replan_steps: int) -> list:
    actions = np.asarray(actions)
    if actions.ndim != 2 or len(actions) < replan_steps:
        raise ValueError(
            f"The policy returned actions of shape {actions.shape}; expected [horizon >= {replan_steps}, action_dim]"
        )
    return list(actions[:replan_steps])
