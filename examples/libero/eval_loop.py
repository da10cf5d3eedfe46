"""The LIBERO evaluation loop, independent of the simulator and of the transport.

The simulator environment, the policy (anything with ``infer(obs) -> {"actions": [H, 7]}``), the image preprocessing
and the video writer are injected, so the loop runs against the real LIBERO ``OffScreenRenderEnv`` (see ``main.py``)
or a fake environment with the same interface (see ``tests/examples/test_libero_eval_loop.py``).

The protocol is upstream's: 10 gripper-open no-ops while the objects settle, both cameras rotated by 180 degrees (the
published LIBERO checkpoints were trained on upright images) and resized with padding on the client, the state as
end-effector position (3) + axis-angle orientation (3) + gripper finger positions (2), replanning every
``replan_steps`` actions of a chunk, and a per-suite step limit.

With ``run_async`` the next chunk is inferred in a thread while the simulator executes the current one; the delay is
counted in executed steps and the late chunk entered at its matching action. With ``rtc`` ("guided" or "trained") each
request also carries the current chunk's unexecuted actions and the last measured delay (real-time chunking,
docs/rtc.md).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import math
import statistics
import time
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
# π0 / π0.5 pool three camera slots (agent view, left wrist, right wrist) into the patch mask a pruning server returns.
CAMERA_SLOTS = 3
# The request keys of openpi.policies (this environment cannot import openpi).
KEPT_PATCHES_REQUEST_KEY = "return_kept_patches"
RTC_CHOICES = ("none", "guided", "trained")
# Within an episode, log where it stands every this many policy actions.
PROGRESS_EVERY_STEPS = 50

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
    task_id: int | None = None  # the task's number in its suite (default: its position in the evaluated list)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    max_steps: int
    # Execute this many actions of each predicted chunk before asking the policy again.
    replan_steps: int = 5
    # No-op steps at the start of each episode while objects fall into place.
    num_steps_wait: int = 10
    num_trials_per_task: int = 50
    # Ask the server for the patches its pruner kept and draw them over the video frames.
    draw_kept_patches: bool = False
    # Execute the current chunk while the next one is inferred; "guided"/"trained" continue it (real-time chunking).
    run_async: bool = False
    rtc: str = "none"

    def __post_init__(self) -> None:
        if self.rtc not in RTC_CHOICES:
            raise ValueError(f"rtc must be one of {RTC_CHOICES}, got {self.rtc!r}")
        if self.rtc != "none" and not self.run_async:
            raise ValueError("Real-time chunking continues a chunk that runs during inference: it needs --async")


@dataclasses.dataclass
class EpisodeResult:
    success: bool
    steps: int  # policy actions executed (after the settle phase)
    frames: list  # the agent-view images the policy was sent, kept patches drawn when asked for
    infer_ms: list  # the server's time inside the policy, per request
    delays: list = dataclasses.field(default_factory=list)  # asynchronous: executed steps each chunk arrived late


@dataclasses.dataclass
class TaskResult:
    description: str
    task_id: int
    episodes: int = 0
    successes: int = 0
    episode_steps: list = dataclasses.field(default_factory=list)
    infer_ms: list = dataclasses.field(default_factory=list)
    delays: list = dataclasses.field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def add(self, episode: EpisodeResult) -> None:
        self.episodes += 1
        self.successes += int(episode.success)
        self.episode_steps.append(episode.steps)
        self.infer_ms.extend(episode.infer_ms)
        self.delays.extend(episode.delays)


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Converts a unit quaternion ``(x, y, z, w)`` to an axis-angle vector (axis scaled by the angle in radians)."""
    x, y, z, w = (float(v) for v in quat)
    w = min(1.0, max(-1.0, w))
    sin_half = math.sqrt(1.0 - w * w)
    if sin_half < 1e-8:
        return np.zeros(3, dtype=np.float32)
    angle = 2.0 * math.acos(w)
    return np.array([x, y, z], dtype=np.float32) * (angle / sin_half)


def make_request(obs: dict, prompt: str, preprocess_image: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Builds the policy request from a LIBERO observation.

    LIBERO renders images upside down, so both cameras are rotated by 180 degrees, as in the training data. The state
    is end-effector position (3), orientation as axis-angle (3) and the two gripper finger positions (2).
    """
    agent_view = np.ascontiguousarray(obs["agentview_image"][::-1, ::-1])
    wrist_view = np.ascontiguousarray(obs["robot0_eye_in_hand_image"][::-1, ::-1])
    state = np.concatenate(
        [obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
    ).astype(np.float32)
    return {
        "observation/image": preprocess_image(agent_view),
        "observation/wrist_image": preprocess_image(wrist_view),
        "observation/state": state,
        "prompt": prompt,
    }


class Progress:
    """Logs where an evaluation stands: the episode, its step, the success so far and the time left (ETA)."""

    def __init__(self, total_episodes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_episodes = total_episodes
        self.clock = clock
        self.started = clock()
        self.episodes = 0
        self.successes = 0
        self.label = ""

    def start_episode(self, label: str) -> None:
        self.label = label

    def step(self, steps: int, max_steps: int) -> None:
        if steps % PROGRESS_EVERY_STEPS == 0:
            logger.info("%s: step %d/%d; %s", self.label, steps, max_steps, self._so_far())

    def end_episode(self, outcome: EpisodeResult) -> None:
        self.episodes += 1
        self.successes += outcome.success
        verdict = "success" if outcome.success else "failure"
        logger.info("%s: %s in %d steps; %s", self.label, verdict, outcome.steps, self._so_far())

    def eta_s(self) -> float | None:
        """Seconds left at the mean time per finished episode (None before the first ends)."""
        if not self.episodes:
            return None
        return (self.clock() - self.started) / self.episodes * (self.total_episodes - self.episodes)

    def _so_far(self) -> str:
        eta = self.eta_s()
        eta_text = "ETA unknown" if eta is None else f"ETA {eta / 60:.1f} min"
        done = f"episode {self.episodes + 1}/{self.total_episodes}" if self.episodes < self.total_episodes else "done"
        return f"{done}, success so far {self.successes}/{self.episodes}, {eta_text}"


def run_episode(
    env: LiberoEnv,
    policy: Policy,
    task: Task,
    init_state: np.ndarray,
    config: EvalConfig,
    preprocess_image: Callable[[np.ndarray], np.ndarray],
    progress: Progress | None = None,
) -> EpisodeResult:
    """Runs one episode from ``init_state`` until LIBERO reports success or ``config.max_steps`` actions ran."""
    env.reset()
    obs = env.set_init_state(init_state)
    for _ in range(config.num_steps_wait):
        obs, _, _, _ = env.step(list(SETTLE_ACTION))
    result = EpisodeResult(success=False, steps=0, frames=[], infer_ms=[])
    if config.run_async:
        return _run_async(env, policy, task, obs, config, preprocess_image, result, progress)
    plan: collections.deque = collections.deque()
    kept = None
    while result.steps < config.max_steps:
        request = make_request(obs, task.description, preprocess_image)
        if not plan:
            if config.draw_kept_patches:
                request[KEPT_PATCHES_REQUEST_KEY] = True
            reply = policy.infer(request)
            plan.extend(_chunk_head(reply["actions"], config.replan_steps))
            result.infer_ms.extend(_infer_ms(reply))
            kept = reply.get("kept_patch_mask")
        frame = request["observation/image"]
        result.frames.append(frame if kept is None else draw_kept_patches(frame, np.asarray(kept)))
        obs, _, done, _ = env.step(plan.popleft().tolist())
        result.steps += 1
        if progress is not None:
            progress.step(result.steps, config.max_steps)
        if done:
            result.success = True
            break
    return result


def _run_async(
    env: LiberoEnv,
    policy: Policy,
    task: Task,
    obs: dict,
    config: EvalConfig,
    preprocess_image: Callable[[np.ndarray], np.ndarray],
    result: EpisodeResult,
    progress: Progress | None,
) -> EpisodeResult:
    """The episode with the next chunk inferred while the current one runs (the module docstring)."""
    chunk, index, pending = None, 0, None  # pending: the request's future and the steps executed when it was sent
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        while result.steps < config.max_steps:
            request = make_request(obs, task.description, preprocess_image)
            if pending is None and (chunk is None or index >= min(config.replan_steps, len(chunk))):
                if config.rtc != "none" and chunk is not None and index < len(chunk):
                    delay = min(result.delays[-1] if result.delays else 0, len(chunk) - index)
                    request |= {"prev_actions": chunk[index:], "inference_delay": delay, "rtc_mode": config.rtc}
                pending = (pool.submit(policy.infer, request), result.steps)
            if pending is not None and (pending[0].done() or chunk is None or index >= len(chunk)):
                reply = pending[0].result()  # blocks only when the current chunk ran out: the robot waits
                result.delays.append(result.steps - pending[1])
                result.infer_ms.extend(_infer_ms(reply))
                chunk, pending = np.asarray(reply["actions"]), None
                index = min(result.delays[-1], len(chunk))
                continue
            result.frames.append(request["observation/image"])
            obs, _, done, _ = env.step(chunk[index].tolist())
            index, result.steps = index + 1, result.steps + 1
            if progress is not None:
                progress.step(result.steps, config.max_steps)
            if done:
                result.success = True
                break
    return result


def draw_kept_patches(frame: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Dims the patches of ``frame`` (the agent view as sent, ``[S, S, 3]`` uint8) that the pruner dropped.

    ``kept``: ``[CAMERA_SLOTS * side * side]`` bool, camera-major, the agent view first (the model's camera order).
    """
    side = math.isqrt(kept.size // CAMERA_SLOTS)
    if side * side * CAMERA_SLOTS != kept.size or frame.shape[0] % side:
        raise ValueError(f"A kept-patch mask of {kept.size} entries does not tile a {frame.shape[0]} px frame")
    patch = frame.shape[0] // side
    agent_view = kept[: side * side].reshape(side, side)
    pixels = np.repeat(np.repeat(agent_view, patch, axis=0), patch, axis=1)
    dimmed = frame.astype(np.float32) * np.where(pixels, 1.0, 0.3)[..., None]
    return dimmed.astype(np.uint8)


def _infer_ms(reply: dict) -> list:
    timing = reply.get("server_timing") or reply.get("policy_timing") or {}
    return [float(timing["infer_ms"])] if "infer_ms" in timing else []


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
    progress = Progress(sum(min(config.num_trials_per_task, len(task.init_states)) for task in tasks))
    for task_index, task in enumerate(tasks):
        env = make_env(task_index)
        task_id = task_index if task.task_id is None else task.task_id
        result = TaskResult(task.description, task_id)
        for episode in range(min(config.num_trials_per_task, len(task.init_states))):
            progress.start_episode(f"task {task_id} episode {episode}")
            outcome = run_episode(env, policy, task, task.init_states[episode], config, preprocess_image, progress)
            progress.end_episode(outcome)
            result.add(outcome)
            save_video(
                f"task{task_id:02d}_ep{episode:03d}_{'success' if outcome.success else 'failure'}", outcome.frames
            )
        env.close()
        logger.info("Task %d (%s): %d/%d", task_id, task.description, result.successes, result.episodes)
        results.append(result)
    return results


def summary(results: Sequence[TaskResult]) -> dict:
    """Per-task and total success rates, episode lengths and the server's inference times, JSON-serialisable."""
    episodes = sum(r.episodes for r in results)
    successes = sum(r.successes for r in results)
    return {
        "tasks": [
            {
                "task_id": r.task_id,
                "description": r.description,
                "episodes": r.episodes,
                "successes": r.successes,
                "success_rate": r.success_rate,
                "episode_steps": r.episode_steps,
            }
            for r in results
        ],
        "episodes": episodes,
        "successes": successes,
        "success_rate": successes / episodes if episodes else 0.0,
        "mean_episode_steps": statistics.fmean(s for r in results for s in r.episode_steps) if episodes else None,
        "infer_ms": _timing_stats([ms for r in results for ms in r.infer_ms]),
        "inference_delay_steps": _timing_stats([d for r in results for d in r.delays]),
    }


def _timing_stats(values: list) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "requests": len(ordered),
        "mean": statistics.fmean(ordered),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
    }


def _chunk_head(actions: np.ndarray, replan_steps: int) -> list:
    actions = np.asarray(actions)
    if actions.ndim != 2 or len(actions) < replan_steps:
        raise ValueError(
            f"The policy returned actions of shape {actions.shape}; expected [horizon >= {replan_steps}, action_dim]"
        )
    return list(actions[:replan_steps])
