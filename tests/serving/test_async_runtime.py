"""The asynchronous chunk runtime: the robot runs on while a chunk is inferred, the delay is measured in executed
steps and sent with the next request, and a late chunk is entered at its matching action."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from openpi.serving.async_runtime import AsyncChunkRuntime

HORIZON = 10
HELD_STEPS = 3  # every chunk after the first is held back until the robot ran this many more actions


class GatedPolicy:
    """Chunk ``k`` holds ``k * 100 + i`` at action ``i``; requests after the first return only once the robot has
    executed ``HELD_STEPS`` actions since they were sent."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.executed = 0
        self.moved = threading.Condition()

    def infer(self, obs: dict) -> dict:
        self.requests.append(obs)
        if len(self.requests) > 1:
            with self.moved:
                start = obs["executed"]
                assert self.moved.wait_for(lambda: self.executed >= start + HELD_STEPS, timeout=10)
        chunk = (len(self.requests) - 1) * 100 + np.arange(HORIZON, dtype=np.float32)
        return {"actions": np.repeat(chunk[:, None], 2, axis=1)}

    def act(self, action: np.ndarray) -> bool:
        with self.moved:
            self.executed += 1
            self.moved.notify_all()
        self.actions.append(float(action[0]))
        return False


@pytest.mark.parametrize("rtc", ["none", "guided"])
def test_late_chunks_enter_at_the_measured_delay_and_the_delay_is_sent(rtc):
    policy = GatedPolicy()
    policy.actions = []
    runtime = AsyncChunkRuntime(policy, replan_steps=5, rtc=rtc)
    stats = runtime.run(lambda: {"executed": policy.executed}, policy.act, max_steps=30)
    assert stats.executed == 30 and len(stats.delays) >= 4
    assert stats.delays[0] == 0 and all(d >= HELD_STEPS for d in stats.delays[1:])
    switches = [i for i in range(1, 30) if policy.actions[i] // 100 != policy.actions[i - 1] // 100]
    for switch, delay in zip(switches, stats.delays[1:], strict=False):
        assert policy.actions[switch] % 100 == delay  # chunk k+1 starts at its action matching the delay
    second, third = policy.requests[1], policy.requests[2]
    if rtc == "none":
        assert "prev_actions" not in second
    else:
        assert second["inference_delay"] == 0 and third["inference_delay"] == stats.delays[1]
        assert third["rtc_mode"] == "guided" and len(third["prev_actions"]) == HORIZON - 5
    assert len(stats.smoothness.boundary) == len(switches)
