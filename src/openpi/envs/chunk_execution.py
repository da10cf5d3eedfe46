"""Executing action chunks that arrive late: which action runs at each control step, what to send with the next
request, and how smooth the result is.

A chunk predicted from the observation at control step ``k`` holds the actions of steps ``k, k+1, ...``. While it is
computed the robot either waits (``sync``) or keeps executing the current chunk (``async``); a chunk that arrives
``e`` executed steps after its observation is entered at its action ``e``, so each action runs at its own step. With
real-time chunking the request carries the current chunk's actions from the observation's step on (``prev_actions``)
and the expected delay (``inference_delay``), so that the new chunk continues them (docs/rtc.md).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

Execution = Literal["sync", "async"]
RTCChoice = Literal["none", "guided", "trained"]
EXECUTIONS: tuple[str, ...] = ("sync", "async")
RTC_CHOICES: tuple[str, ...] = ("none", "guided", "trained")


@dataclasses.dataclass
class Smoothness:
    """``|a_t - a_{t-1}|`` (mean over the action's dimensions) of consecutive executed actions, split by whether
    ``a_t`` is the first action of a newly entered chunk (a boundary) or not."""

    boundary: list[float] = dataclasses.field(default_factory=list)
    within: list[float] = dataclasses.field(default_factory=list)
    _last: np.ndarray | None = None

    def record(self, action: np.ndarray, switched: bool) -> None:
        action = np.asarray(action, dtype=np.float64)
        if self._last is not None:
            (self.boundary if switched else self.within).append(float(np.abs(action - self._last).mean()))
        self._last = action


class ChunkExecutor:
    """The chunk being executed and when to ask for the next one.

    A new chunk is due once ``replan_steps`` actions of the current one have run (all of a shorter chunk; at once when
    there is none). With
    ``rtc`` other than ``none`` the request fields continue the current chunk.
    """

    def __init__(self, replan_steps: int, rtc: RTCChoice = "none", execution_horizon: int | None = None) -> None:
        if replan_steps < 1:
            raise ValueError(f"replan_steps must be >= 1, got {replan_steps}")
        if rtc not in RTC_CHOICES:
            raise ValueError(f"rtc must be one of {RTC_CHOICES}, got {rtc!r}")
        self.replan_steps = replan_steps
        self.rtc = rtc
        self.execution_horizon = execution_horizon
        self.chunk: np.ndarray | None = None  # [H, A]
        self.index = 0  # the next action of the chunk to run
        self._switched = False

    @property
    def due(self) -> bool:
        return self.chunk is None or self.index >= min(self.replan_steps, len(self.chunk))

    @property
    def has_action(self) -> bool:
        return self.chunk is not None and self.index < len(self.chunk)

    def request_fields(self, expected_delay: int) -> dict:
        """The RTC fields of a request sent now (empty without RTC or without a chunk to continue)."""
        if self.rtc == "none" or not self.has_action:
            return {}
        remaining = np.asarray(self.chunk[self.index :], dtype=np.float32)
        fields = {
            "prev_actions": remaining,
            "inference_delay": min(int(expected_delay), len(remaining)),
            "rtc_mode": self.rtc,
        }
        if self.execution_horizon is not None:
            fields["execution_horizon"] = self.execution_horizon
        return fields

    def receive(self, actions: np.ndarray, executed_since_request: int) -> None:
        """Enters a chunk whose observation is ``executed_since_request`` executed steps old at its matching action."""
        self.chunk = np.asarray(actions)
        self.index = min(executed_since_request, len(self.chunk))
        self._switched = True

    def next_action(self) -> tuple[np.ndarray, bool]:
        """The action to run now and whether it is the first of a newly entered chunk."""
        if not self.has_action:
            raise RuntimeError("No action left to run: wait for the next chunk")
        action, switched = self.chunk[self.index], self._switched
        self.index += 1
        self._switched = False
        return action, switched
