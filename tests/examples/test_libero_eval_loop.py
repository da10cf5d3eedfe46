"""The LIBERO evaluation loop (examples/libero/eval_loop.py) against a fake simulator with LIBERO's interface."""

import math
import threading

import numpy as np
import pytest

from examples.libero import eval_loop

HORIZON = 8


class FakeLiberoEnv:
    """Succeeds once the accumulated x-action reaches ``goal``; images encode the step count for checking rotation."""

    def __init__(self, goal: float) -> None:
        self.goal = goal
        self.actions: list[list[float]] = []
        self.closed = False

    def reset(self) -> None:
        self.actions = []

    def set_init_state(self, init_state: np.ndarray) -> dict:
        self.x = float(init_state[0])
        return self._obs()

    def step(self, action: list) -> tuple[dict, float, bool, dict]:
        assert isinstance(action, list) and len(action) == 7
        self.actions.append(action)
        self.x += action[0]
        done = self.x >= self.goal
        return self._obs(), float(done), done, {}

    def close(self) -> None:
        self.closed = True

    def _obs(self) -> dict:
        image = np.zeros((16, 16, 3), np.uint8)
        image[0, 0] = 255  # top-left in LIBERO's upside-down rendering
        return {
            "agentview_image": image,
            "robot0_eye_in_hand_image": image,
            "robot0_eef_pos": np.array([self.x, 0.0, 0.0]),
            "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
            "robot0_gripper_qpos": np.array([0.01, -0.01]),
        }


class StepPolicy:
    """Returns chunks whose x-action is 1; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def infer(self, obs: dict) -> dict:
        self.requests.append(obs)
        actions = np.zeros((HORIZON, 7), np.float32)
        actions[:, 0] = 1.0
        actions[:, 1] = np.arange(HORIZON)  # chunk index, to check which actions were executed
        return {"actions": actions, "server_timing": {"infer_ms": 2.5}}


def _identity(image: np.ndarray) -> np.ndarray:
    return image


def test_episode_replans_every_n_steps_and_stops_on_success():
    env, policy = FakeLiberoEnv(goal=12.0), StepPolicy()
    task = eval_loop.Task("put the bowl on the plate", [np.zeros(3)])
    config = eval_loop.EvalConfig(max_steps=50, replan_steps=5, num_steps_wait=3)
    episode = eval_loop.run_episode(env, policy, task, task.init_states[0], config, _identity)
    assert episode.success and episode.steps == 12
    settle, executed = env.actions[:3], env.actions[3:]
    assert settle == [list(eval_loop.SETTLE_ACTION)] * 3
    assert len(executed) == 12 and len(episode.frames) == 12
    assert [a[1] for a in executed] == [0, 1, 2, 3, 4] * 2 + [0, 1]
    assert len(policy.requests) == 3
    request = policy.requests[0]
    assert request["prompt"] == "put the bowl on the plate"
    assert request["observation/image"][-1, -1, 0] == 255  # rotated by 180 degrees
    np.testing.assert_allclose(request["observation/state"], [0, 0, 0, 0, 0, 0, 0.01, -0.01])
    assert request["observation/state"].dtype == np.float32


def test_episode_fails_after_max_steps():
    env, policy = FakeLiberoEnv(goal=1e9), StepPolicy()
    task = eval_loop.Task("unreachable", [np.zeros(3)])
    config = eval_loop.EvalConfig(max_steps=20, replan_steps=4, num_steps_wait=0)
    episode = eval_loop.run_episode(env, policy, task, task.init_states[0], config, _identity)
    assert not episode.success and episode.steps == 20
    assert len(env.actions) == 20 and len(episode.frames) == 20 and len(policy.requests) == 5


def test_suite_reports_per_task_success_rates_and_saves_videos():
    goals = [5.0, 1e9]  # task 0 always succeeds, task 1 never does
    tasks = [eval_loop.Task(f"task {i}", [np.array([s, 0, 0]) for s in (0.0, 1.0, 2.0)]) for i in range(2)]
    envs: list[FakeLiberoEnv] = []

    def make_env(task_index: int) -> FakeLiberoEnv:
        envs.append(FakeLiberoEnv(goals[task_index]))
        return envs[-1]

    videos: dict[str, int] = {}
    config = eval_loop.EvalConfig(max_steps=10, replan_steps=2, num_steps_wait=1, num_trials_per_task=2)
    results = eval_loop.evaluate_suite(
        tasks, make_env, StepPolicy(), config, _identity, lambda name, frames: videos.update({name: len(frames)})
    )
    summary = eval_loop.summary(results)
    assert [(t["episodes"], t["successes"], t["success_rate"]) for t in summary["tasks"]] == [(2, 2, 1.0), (2, 0, 0.0)]
    assert summary["success_rate"] == 0.5
    assert sorted(videos) == [
        "task00_ep000_success",
        "task00_ep001_success",
        "task01_ep000_failure",
        "task01_ep001_failure",
    ]
    assert videos["task01_ep000_failure"] == 10
    assert all(env.closed for env in envs)
    assert summary["tasks"][1]["episode_steps"] == [10, 10]
    assert summary["infer_ms"]["requests"] == 2 * 5 + 3 + 2 and summary["infer_ms"]["p50"] == 2.5


def test_short_action_chunk_is_an_error():
    class ShortPolicy:
        def infer(self, obs: dict) -> dict:
            return {"actions": np.zeros((2, 7))}

    task = eval_loop.Task("t", [np.zeros(3)])
    config = eval_loop.EvalConfig(max_steps=10, replan_steps=5, num_steps_wait=0)
    with pytest.raises(ValueError, match=r"horizon >= 5"):
        eval_loop.run_episode(FakeLiberoEnv(1.0), ShortPolicy(), task, task.init_states[0], config, _identity)


def test_quaternion_to_axis_angle():
    half = math.pi / 4  # 90 degrees about z
    np.testing.assert_allclose(
        eval_loop.quat_to_axis_angle(np.array([0, 0, math.sin(half), math.cos(half)])), [0, 0, math.pi / 2], atol=1e-6
    )
    np.testing.assert_array_equal(eval_loop.quat_to_axis_angle(np.array([0, 0, 0, 1.0])), np.zeros(3))


class PruningPolicy(StepPolicy):
    """Answers a request for kept patches with a mask keeping the agent view's top-left patch only."""

    def infer(self, obs: dict) -> dict:
        reply = super().infer(obs)
        if obs.get(eval_loop.KEPT_PATCHES_REQUEST_KEY):
            kept = np.zeros(eval_loop.CAMERA_SLOTS * 4 * 4, dtype=bool)
            kept[0] = True
            reply["kept_patch_mask"] = kept
        return reply


def test_kept_patches_are_asked_for_and_drawn_over_the_frames():
    env, policy = FakeLiberoEnv(goal=1e9), PruningPolicy()
    task = eval_loop.Task("t", [np.zeros(3)])
    config = eval_loop.EvalConfig(max_steps=4, replan_steps=2, num_steps_wait=0, draw_kept_patches=True)
    bright = lambda image: np.full((16, 16, 3), 200, np.uint8)  # noqa: E731
    episode = eval_loop.run_episode(env, policy, task, task.init_states[0], config, bright)
    assert all(r[eval_loop.KEPT_PATCHES_REQUEST_KEY] for r in policy.requests)
    frame = episode.frames[0]
    assert (frame[:4, :4] == 200).all(), "the kept patch is untouched"
    assert (frame[4:, :] < 100).all() and (frame[:, 4:] < 100).all(), "dropped patches are dimmed"


def test_a_mask_that_does_not_tile_the_frame_is_an_error():
    with pytest.raises(ValueError, match="does not tile"):
        eval_loop.draw_kept_patches(np.zeros((16, 16, 3), np.uint8), np.ones(3 * 25, dtype=bool))


class GatedEnv(FakeLiberoEnv):
    """Counts executed steps for :class:`GatedPolicy` to wait on."""

    def __init__(self, goal: float) -> None:
        super().__init__(goal)
        self.moved = threading.Condition()

    def step(self, action: list) -> tuple[dict, float, bool, dict]:
        with self.moved:
            out = super().step(action)
            self.moved.notify_all()
        return out


class GatedPolicy(StepPolicy):
    """Answers every request after the first only once the robot executed 2 more actions: a measured delay of 2+."""

    def __init__(self, env: GatedEnv) -> None:
        super().__init__()
        self.env = env

    def infer(self, obs: dict) -> dict:
        sent = round(float(obs["observation/state"][0]))  # x moves 1 per executed step: the steps at the request
        if self.requests:
            with self.env.moved:
                assert self.env.moved.wait_for(lambda: len(self.env.actions) >= sent + 2, timeout=10)
        return super().infer(obs)


@pytest.mark.parametrize("rtc", ["none", "guided"])
def test_async_runs_on_during_inference_and_enters_late_chunks_at_the_measured_delay(rtc):
    env = GatedEnv(goal=1e9)
    policy = GatedPolicy(env)
    task = eval_loop.Task("stack the blocks", [np.zeros(3)])
    config = eval_loop.EvalConfig(max_steps=20, replan_steps=4, num_steps_wait=0, run_async=True, rtc=rtc)
    episode = eval_loop.run_episode(env, policy, task, task.init_states[0], config, _identity)
    assert episode.steps == 20 and episode.delays[0] == 0 and all(d >= 2 for d in episode.delays[1:])
    indices = [a[1] for a in env.actions]
    assert indices[:6] == [0, 1, 2, 3, 4, 5]  # chunk 0 runs on past replan_steps while chunk 1 is inferred
    assert indices[4 + episode.delays[1]] == episode.delays[1]  # chunk 1 entered at its action matching the delay
    second = policy.requests[1]
    if rtc == "none":
        assert "prev_actions" not in second
    else:
        assert second["rtc_mode"] == "guided" and second["inference_delay"] == 0
        np.testing.assert_array_equal(second["prev_actions"][:, 1], np.arange(4, HORIZON))


def test_rtc_needs_async():
    with pytest.raises(ValueError, match="needs --async"):
        eval_loop.EvalConfig(max_steps=5, rtc="guided")


def test_progress_logs_episode_step_success_so_far_and_eta(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    progress = eval_loop.Progress(total_episodes=3, clock=lambda: now[0])
    env, policy = FakeLiberoEnv(goal=1e9), StepPolicy()
    task = eval_loop.Task("unreachable", [np.zeros(3)])
    config = eval_loop.EvalConfig(max_steps=eval_loop.PROGRESS_EVERY_STEPS, replan_steps=4, num_steps_wait=0)
    with caplog.at_level("INFO", logger=eval_loop.logger.name):
        progress.start_episode("task 0 episode 0")
        outcome = eval_loop.run_episode(env, policy, task, task.init_states[0], config, _identity, progress)
        now[0] = 120.0
        progress.end_episode(outcome)
    step_line, end_line = caplog.messages
    assert step_line == (
        f"task 0 episode 0: step {config.max_steps}/{config.max_steps}; episode 1/3, success so far 0/0, ETA unknown"
    )
    assert (
        end_line
        == f"task 0 episode 0: failure in {config.max_steps} steps; episode 2/3, success so far 0/1, ETA 4.0 min"
    )
