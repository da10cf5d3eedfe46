"""Late chunks in the shapes testbed: the robot waits (sync) or runs on (async), a late chunk is entered at its
matching action, RTC requests carry the unexecuted actions and the delay, and smoothness is split at boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from openpi.envs import rollout
from openpi.envs.chunk_execution import ChunkExecutor, Smoothness
from openpi.envs.shapes import ShapesEnv, ShapesTask

HORIZON = 10


class CountingPolicy:
    """Chunk ``k`` (from 0) holds ``k + i / 100`` in every dimension at action ``i`` (never closing the gripper), so
    that the executed actions tell which chunk and which action ran; keeps every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def infer(self, obs: dict) -> dict:
        self.requests.append(obs)
        values = len(self.requests) - 1 + np.arange(HORIZON) / 100
        actions = np.repeat(values[:, None], 7, axis=1).astype(np.float32) * 0.01
        actions[:, -1] = -1.0
        return {"actions": actions}


class RecordingEnv(ShapesEnv):
    def __init__(self, max_steps: int) -> None:
        super().__init__(ShapesTask(max_steps=max_steps))
        self.executed: list[np.ndarray] = []

    def step(self, action):
        self.executed.append(np.asarray(action))
        return super().step(action)


def _chunk_and_index(action: np.ndarray) -> tuple[int, int]:
    value = round(float(action[0]) * 100 * 100)
    return value // 100, value % 100


@pytest.mark.parametrize("delay", [0, 1, 3])
def test_sync_waits_delay_steps_for_every_chunk_and_starts_it_at_its_first_action(delay):
    env, policy = RecordingEnv(max_steps=12), CountingPolicy()
    result = rollout.run_episode(env, policy, 0, replan_steps=5, latency=rollout.Latency(delay, "sync"))
    assert [_chunk_and_index(a) for a in env.executed] == [(k, i) for k in range(3) for i in range(5)][:12]
    assert result.steps == 12 and result.control_steps == 12 + 3 * delay


@pytest.mark.parametrize("delay", [1, 3])
def test_async_runs_on_and_enters_a_late_chunk_at_the_matching_action(delay):
    env, policy = RecordingEnv(max_steps=20), CountingPolicy()
    result = rollout.run_episode(env, policy, 0, replan_steps=5, latency=rollout.Latency(delay, "async", "guided"))
    executed = [_chunk_and_index(a) for a in env.executed]
    assert executed[:5] == [(0, i) for i in range(5)]
    assert executed[5 : 5 + delay] == [(0, 5 + i) for i in range(delay)]  # chunk 0 runs on while chunk 1 computes
    assert executed[5 + delay] == (1, delay)  # chunk 1 was asked for at step 5 and arrives delay steps later
    assert result.control_steps == 20 + delay  # only the first chunk is waited for
    second = policy.requests[1]
    assert second["inference_delay"] == delay and second["rtc_mode"] == "guided"
    np.testing.assert_allclose(second["prev_actions"], _chunk(0)[5:], atol=1e-7)
    assert "prev_actions" not in policy.requests[0]
    assert len(result.smoothness.boundary) == 3 and len(result.smoothness.within) == 16


def test_naive_async_sends_no_rtc_fields_and_rtc_needs_async():
    policy = CountingPolicy()
    rollout.run_episode(RecordingEnv(10), policy, 0, replan_steps=5, latency=rollout.Latency(2, "async"))
    assert all("prev_actions" not in r for r in policy.requests)
    with pytest.raises(ValueError, match="needs async"):
        rollout.Latency(2, "sync", "trained")


def test_a_chunk_shorter_than_the_replanning_period_is_run_whole():
    executor = ChunkExecutor(replan_steps=5)
    executor.receive(np.zeros((3, 7)), 0)
    for _ in range(3):
        executor.next_action()
    assert executor.due and not executor.has_action


def test_smoothness_splits_boundary_and_within_chunk_steps():
    smoothness = Smoothness()
    for action, switched in [(0.0, True), (0.1, False), (0.2, False), (1.2, True), (1.3, False)]:
        smoothness.record(np.full(7, action), switched)
    np.testing.assert_allclose(smoothness.boundary, [1.0])
    np.testing.assert_allclose(smoothness.within, [0.1, 0.1, 0.1])


def _chunk(k: int) -> np.ndarray:
    policy = CountingPolicy()
    for _ in range(k + 1):
        actions = policy.infer({})["actions"]
    return actions
