"""The arms of the real-time chunking experiment, as data: two trained policies, four ways to execute them.

Both policies are the shapes testbed's tiny π0.5 (``pi05_shapes``) with a 10-action horizon, one object per scene and
a vision tower without self-attention (the cheapest that localises: ``research/lightvla/results/local_vision_a.md``);
``rtc_trained`` is trained with a committed prefix of up to :data:`MAX_DELAY` clean actions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from openpi.models.pi0_config import RTCConfig

ACTION_HORIZON = 10
MAX_DELAY = 4  # the largest delay evaluated, and the trained policy's largest committed prefix
DELAYS = (0, 1, 2, 4)
REPLAN_STEPS = 5  # a new chunk is asked for every 5 control steps
LOCAL_VISION = "hidden_size=32,num_hidden_layers=0,num_attention_heads=2,intermediate_size=64,image_size=112"

MODEL: dict[str, Any] = {"action_horizon": ACTION_HORIZON, "vision_variant": LOCAL_VISION}
DATA: dict[str, Any] = {"min_objects": 1, "max_objects": 1, "num_episodes": 1000}
TRAINING_ARMS: dict[str, dict[str, Any]] = {
    "plain": MODEL,
    "rtc_trained": {**MODEL, "rtc": RTCConfig(training_max_delay=MAX_DELAY)},
}


@dataclasses.dataclass(frozen=True)
class ExecutionArm:
    """How a trained policy is executed (``openpi.evaluation.closed_loop.Args`` fields)."""

    weights: str
    execution: str  # "sync" (the robot waits) or "async" (the next chunk is computed while the current one runs)
    rtc: str  # "none", "guided" or "trained"


EXECUTION_ARMS: dict[str, ExecutionArm] = {
    "sync": ExecutionArm("plain", "sync", "none"),
    "naive_async": ExecutionArm("plain", "async", "none"),
    "guided_rtc": ExecutionArm("plain", "async", "guided"),
    "trained_rtc": ExecutionArm("rtc_trained", "async", "trained"),
}
