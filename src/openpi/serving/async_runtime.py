"""An asynchronous action-chunk client: the robot executes the current chunk at its control rate while the next one
is inferred in a background thread; the delay is measured in control steps and sent with the next request.

    runtime = AsyncChunkRuntime(WebsocketClientPolicy(host, port), replan_steps=5, rtc="guided", control_hz=20)
    stats = runtime.run(robot.observation, robot.act, max_steps=400)

``rtc`` other than ``none`` sends the current chunk's unexecuted actions and the last measured delay with each
request (real-time chunking, docs/rtc.md); ``none`` is naive asynchronous execution (the late chunk is entered at its
matching action, without continuing the current one).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from openpi.envs.chunk_execution import ChunkExecutor, RTCChoice, Smoothness


class Policy(Protocol):
    def infer(self, obs: dict) -> dict: ...


@dataclasses.dataclass
class RuntimeStats:
    """One run: actions executed, control periods waited for a chunk, the measured delays (control steps) and the
    smoothness of the executed actions."""

    executed: int = 0
    waited: int = 0
    delays: list[int] = dataclasses.field(default_factory=list)
    smoothness: Smoothness = dataclasses.field(default_factory=Smoothness)
    done: bool = False


class AsyncChunkRuntime:
    """Runs a policy's chunks on a robot asynchronously; see the module docstring."""

    def __init__(
        self,
        policy: Policy,
        *,
        replan_steps: int,
        rtc: RTCChoice = "none",
        control_hz: float | None = None,
        execution_horizon: int | None = None,
    ) -> None:
        """``control_hz``: pace the control loop (None: as fast as the robot callback returns, e.g. a simulator)."""
        if control_hz is not None and control_hz <= 0:
            raise ValueError(f"control_hz must be positive, got {control_hz}")
        self.policy = policy
        self.replan_steps = replan_steps
        self.rtc = rtc
        self.period = None if control_hz is None else 1.0 / control_hz
        self.execution_horizon = execution_horizon

    def run(self, observe: Callable[[], dict], act: Callable[[np.ndarray], bool], max_steps: int) -> RuntimeStats:
        """Executes actions until ``act(action)`` returns True (the episode ended) or ``max_steps`` ran.

        ``observe()`` returns the robot's current observation (a request without RTC fields)."""
        executor = ChunkExecutor(self.replan_steps, self.rtc, self.execution_horizon)
        stats = RuntimeStats()
        pending: tuple[concurrent.futures.Future, int] | None = None  # the request and the executed count at it
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            deadline = time.monotonic()
            while stats.executed < max_steps and not stats.done:
                if pending is None and executor.due:
                    expected = stats.delays[-1] if stats.delays else 0
                    request = {**observe(), **executor.request_fields(expected)}
                    pending = (pool.submit(self.policy.infer, request), stats.executed)
                if pending is not None and pending[0].done():
                    elapsed = stats.executed - pending[1]
                    executor.receive(np.asarray(pending[0].result()["actions"]), elapsed)
                    stats.delays.append(elapsed)
                    pending = None
                    continue
                self._step(executor, stats, act, waiting=pending is not None)
                deadline = self._pace(deadline)
        return stats

    def _step(self, executor: ChunkExecutor, stats: RuntimeStats, act: Callable, waiting: bool) -> None:
        if not executor.has_action:
            stats.waited += 1
            if self.period is None and waiting:
                time.sleep(1e-3)  # unpaced: let the inference thread run
            return
        action, switched = executor.next_action()
        stats.smoothness.record(action, switched)
        stats.executed += 1
        stats.done = bool(act(action))

    def _pace(self, deadline: float) -> float:
        """Sleeps until the next control period (no-op unpaced); returns its deadline."""
        if self.period is None:
            return deadline
        deadline += self.period
        time.sleep(max(0.0, deadline - time.monotonic()))
        return deadline
