"""The one data pipeline: the ordered steps from a dataset sample or a robot observation to model inputs, and from
model outputs back to robot actions. Training, norm-stat computation and serving all build it here."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Literal

import numpy as np

from openpi import transforms as _transforms
from openpi.policies.data_config import DataConfig
from openpi.shared import normalize as _normalize

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckStateDim:
    """Rejects a robot state whose size differs from the norm stats' (which the model was trained with)."""

    dim: int

    def __call__(self, data: dict) -> dict:
        state = np.asarray(data["state"])
        if state.ndim != 1 or state.shape[0] != self.dim:
            raise ValueError(f"'state' must be a vector of {self.dim} values (robot format), got shape {state.shape}")
        return data


@dataclasses.dataclass(frozen=True)
class StateRange:
    """How far a served state may lie outside what the model was trained on before it is refused (``refuse``) or
    logged (``warn``): ``limit`` times the q01..q99 span beyond that range (quantile normalisation), or ``limit``
    standard deviations from the mean (z-score). Dimensions that were constant in training are not checked."""

    limit: float = 10.0
    mode: Literal["refuse", "warn", "off"] = "refuse"

    def __post_init__(self) -> None:
        if not self.limit > 0 or self.mode not in ("refuse", "warn", "off"):
            raise ValueError(f"A state range needs limit > 0 and mode refuse|warn|off, got {self.limit}, {self.mode!r}")


@dataclasses.dataclass(frozen=True)
class CheckStateRange:
    """Refuses (or logs) a robot state far outside the training range: a sensor failure the model must not act on."""

    low: np.ndarray
    high: np.ndarray
    described: str
    refuse: bool

    @classmethod
    def of(cls, stats: _normalize.NormStats, use_quantiles: bool, state_range: StateRange) -> CheckStateRange:
        limit = state_range.limit
        if use_quantiles:
            span = stats.q99 - stats.q01
            low, high = stats.q01 - limit * span, stats.q99 + limit * span
            described = f"the training range q01..q99 widened by {limit:g} times its span on each side"
        else:
            low, high = stats.mean - limit * stats.std, stats.mean + limit * stats.std
            described = f"{limit:g} standard deviations of the training mean"
        constant = low == high
        low, high = np.where(constant, -np.inf, low), np.where(constant, np.inf, high)
        return cls(low.astype(np.float64), high.astype(np.float64), described, state_range.mode == "refuse")

    def __call__(self, data: dict) -> dict:
        state = np.asarray(data["state"], dtype=np.float64)
        outside = np.flatnonzero((state < self.low) | (state > self.high))
        if outside.size:
            i = int(outside[0])
            message = (
                f"'state' dimension {i} is {state[i]:.4g}, outside [{self.low[i]:.4g}, {self.high[i]:.4g}] "
                f"({self.described}; {outside.size} dimension(s) outside)"
            )
            if self.refuse:
                raise ValueError(message)
            logger.warning("Serving a state out of range: %s", message)
        return data


def check_norm_stats(
    norm_stats: Mapping[str, _normalize.NormStats], data_config: DataConfig, source: str | None = None
) -> None:
    """Refuses statistics that load but cannot serve this robot and model: ``state`` of another size than the robot's
    state, ``actions`` shorter than the robot's actions, or quantile normalisation (π0.5) without ``q01``/``q99``.

    Raises:
        ValueError: naming ``source`` (where they come from, e.g. ``"in <file>"``) and the key.
    """
    problems = [f"there is no {key!r}" for key in ("state", "actions") if key not in norm_stats]
    state, actions = norm_stats.get("state"), norm_stats.get("actions")
    state_dim, action_dim = data_config.robot_state_dim, data_config.robot_action_dim
    if state is not None and state_dim is not None and len(state.mean) != state_dim:
        problems.append(f"'state' has {len(state.mean)} values but the robot's state has {state_dim}")
    if actions is not None and action_dim is not None and len(actions.mean) < action_dim:
        problems.append(f"'actions' has {len(actions.mean)} values but the robot has {action_dim} action dims")
    if data_config.use_quantile_norm:
        lacking = [key for key in ("state", "actions") if key in norm_stats and not norm_stats[key].has_quantiles]
        problems += [f"{key!r} lacks q01/q99, which this model's quantile normalisation needs" for key in lacking]
    if problems:
        recompute = "Recompute them with scripts/compute_norm_stats.py"
        where = "" if source is None else f" {source}"
        raise ValueError(f"Norm stats{where}: {'; '.join(problems)}. {recompute}")


def build_pipeline(
    data_config: DataConfig,
    norm_stats: Mapping[str, _normalize.NormStats] | None,
    *,
    from_dataset: bool,
    default_prompt: str | None = None,
    stage: Literal["robot", "model"] = "model",
    norm_stats_source: str | None = None,
    state_range: StateRange | None = None,
) -> _transforms.Group:
    """The input steps and output steps of ``data_config``, in the order they run.

    Inputs, one sample at a time:

    1. ``PromptFromLeRobotTask`` — dataset samples only, when ``data_config.prompt_from_task``.
    2. ``repack_transforms`` — dataset samples only: dataset keys -> the robot's observation keys. A served robot
       already sends its observation keys, so serving starts at step 3.
    3. ``InjectDefaultPrompt`` — ``default_prompt`` (else the data config's) for samples without a prompt.
    4. ``data_transforms`` — the robot mapping: its cameras, state and actions -> the model's layout.
    5. ``CheckStateDim``, ``CheckStateRange`` (served observations, with ``state_range``) and ``Normalize`` — with
       the norm stats; skipped when ``norm_stats`` is None (only while computing them).
    6. ``model_transforms`` — resize every camera once to the vision tower's resolution, tokenize, pad.

    Outputs, the inverse in reverse order: model outputs -> ``Unnormalize`` -> robot outputs.

    ``stage="robot"`` stops after step 4, in the robot's units (what norm stats are computed on). The norm stats are
    checked against the robot (:func:`check_norm_stats`; ``norm_stats_source`` names them in the error).
    """
    dataset_steps: list[_transforms.DataTransformFn] = []
    if from_dataset:
        if data_config.prompt_from_task:
            dataset_steps.append(_transforms.PromptFromLeRobotTask())
        dataset_steps.extend(data_config.repack_transforms.inputs)
    prompt = default_prompt if default_prompt is not None else data_config.default_prompt
    inputs = [*dataset_steps, _transforms.InjectDefaultPrompt(prompt), *data_config.data_transforms.inputs]
    if stage == "robot":
        return _transforms.Group(inputs=tuple(inputs), outputs=tuple(data_config.data_transforms.outputs))
    outputs = [*data_config.model_transforms.outputs]
    if norm_stats is not None:
        check_norm_stats(norm_stats, data_config, norm_stats_source)
        quantiles = data_config.use_quantile_norm
        inputs.append(CheckStateDim(len(norm_stats["state"].mean)))
        if state_range is not None and state_range.mode != "off":
            inputs.append(CheckStateRange.of(norm_stats["state"], quantiles, state_range))
        inputs.append(_transforms.Normalize(norm_stats, quantiles))
        outputs.append(_transforms.Unnormalize(norm_stats, quantiles))
    inputs += data_config.model_transforms.inputs
    outputs += data_config.data_transforms.outputs
    return _transforms.Group(inputs=tuple(inputs), outputs=tuple(outputs))
