"""The one data pipeline: the ordered steps from a dataset sample or a robot observation to model inputs, and from
model outputs back to robot actions. Training, norm-stat computation and serving all build it here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import numpy as np

from openpi import transforms as _transforms
from openpi.policies.data_config import DataConfig
from openpi.shared import normalize as _normalize


@dataclasses.dataclass(frozen=True)
class CheckStateDim:
    """Rejects a robot state whose size differs from the norm stats' (which the model was trained with)."""

    dim: int

    def __call__(self, data: dict) -> dict:
        state = np.asarray(data["state"])
        if state.ndim != 1 or state.shape[0] != self.dim:
            raise ValueError(f"'state' must be a vector of {self.dim} values (robot format), got shape {state.shape}")
        return data


def _check_norm_stats(norm_stats: Mapping[str, _normalize.NormStats], robot_action_dim: int | None) -> None:
    """Normalize applies to the keys the stats hold: without ``state`` or ``actions`` the model would silently get
    them in robot units."""
    if missing := [key for key in ("state", "actions") if key not in norm_stats]:
        raise ValueError(
            f"The norm stats have no {missing} (they have {sorted(norm_stats)}). Compute them with "
            "`uv run scripts/compute_norm_stats.py --config-name <CONFIG>`."
        )
    actions = norm_stats["actions"]
    if robot_action_dim is not None and len(actions.mean) < robot_action_dim:
        raise ValueError(
            f"The 'actions' norm stats have {len(actions.mean)} dims but the robot has {robot_action_dim} action "
            "dims; recompute them with scripts/compute_norm_stats.py"
        )


def build_pipeline(
    data_config: DataConfig,
    norm_stats: Mapping[str, _normalize.NormStats] | None,
    *,
    from_dataset: bool,
    default_prompt: str | None = None,
    stage: Literal["robot", "model"] = "model",
) -> _transforms.Group:
    """The input steps and output steps of ``data_config``, in the order they run.

    Inputs, one sample at a time:

    1. ``PromptFromLeRobotTask`` — dataset samples only, when ``data_config.prompt_from_task``.
    2. ``repack_transforms`` — dataset samples only: dataset keys -> the robot's observation keys. A served robot
       already sends its observation keys, so serving starts at step 3.
    3. ``InjectDefaultPrompt`` — ``default_prompt`` (else the data config's) for samples without a prompt.
    4. ``data_transforms`` — the robot mapping: its cameras, state and actions -> the model's layout.
    5. ``CheckStateDim`` and ``Normalize`` — with the norm stats' dimensions; skipped when ``norm_stats`` is None
       (only while computing them).
    6. ``model_transforms`` — resize every camera once to the vision tower's resolution, tokenize, pad.

    Outputs, the inverse in reverse order: model outputs -> ``Unnormalize`` -> robot outputs.

    ``stage="robot"`` stops after step 4, in the robot's units (what norm stats are computed on).
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
        _check_norm_stats(norm_stats, data_config.robot_action_dim)
        quantiles = data_config.use_quantile_norm
        inputs.append(CheckStateDim(len(norm_stats["state"].mean)))
        inputs.append(_transforms.Normalize(norm_stats, quantiles))
        outputs.append(_transforms.Unnormalize(norm_stats, quantiles))
    inputs += data_config.model_transforms.inputs
    outputs += data_config.data_transforms.outputs
    return _transforms.Group(inputs=tuple(inputs), outputs=tuple(outputs))
