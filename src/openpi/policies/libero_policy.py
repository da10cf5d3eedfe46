"""LIBERO: a Franka arm with a third-person and a wrist camera, 8-dim state, 7-dim actions.

This module is the template for a new robot: copy it and change three things.

1. ``LiberoInputs`` maps the robot's observation (the keys its client sends) onto the model's cameras, state and
   prompt; ``LiberoOutputs`` keeps the robot's action dimensions of the model's padded actions.
2. ``LIBERO_REPACK`` renames the training dataset's keys to the robot's observation keys, so that a training sample
   and a served observation enter ``LiberoInputs`` in the same form.
3. ``LeRobotLiberoDataConfig`` puts them together for the trainer, the norm-stat script and the policy server, which
   all run the steps in the order :func:`openpi.policies.pipeline.build_pipeline` documents.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from openpi import transforms
from openpi.models import pi0_config
from openpi.policies.data_config import DataConfig, DataConfigFactory

ACTION_DIM = 7
STATE_DIM = 8
OBSERVATION_KEYS = ("observation/image", "observation/wrist_image", "observation/state")


@dataclasses.dataclass(frozen=True)
class LiberoInputs:
    """Maps a LIBERO observation (``observation/image``, ``observation/wrist_image``, ``observation/state``,
    optional ``actions`` and ``prompt``) to the model's camera layout; the right-wrist slot is an empty camera."""

    def __call__(self, data: dict) -> dict:
        base = transforms.to_uint8_hwc(data["observation/image"], "observation/image")
        wrist = transforms.to_uint8_hwc(data["observation/wrist_image"], "observation/wrist_image")
        return transforms.single_arm_inputs(data, np.asarray(data["observation/state"], dtype=np.float32), base, wrist)


@dataclasses.dataclass(frozen=True)
class LiberoOutputs:
    """Keeps the first 7 action dims (the model predicts padded actions)."""

    def __call__(self, data: dict) -> dict:
        return {"actions": np.asarray(data["actions"])[..., :ACTION_DIM]}


LIBERO_REPACK = transforms.Group(
    inputs=(
        transforms.RepackTransform(
            {
                "observation/image": "image",
                "observation/wrist_image": "wrist_image",
                "observation/state": "state",
                "actions": "actions",
                "prompt": "prompt",
            }
        ),
    )
)
LIBERO_TRANSFORMS = transforms.Group(inputs=(LiberoInputs(),), outputs=(LiberoOutputs(),))


@dataclasses.dataclass(frozen=True)
class LeRobotLiberoDataConfig(DataConfigFactory):
    """LIBERO in LeRobot format (features ``image``, ``wrist_image``, ``state``, ``actions``; task text as prompt).

    ``extra_delta_transform`` (upstream's name; its ``pi0_libero`` sets it): the model learns the first six action
    dims minus the state's, the gripper as it is; the outputs add the state back.
    """

    repo_id: str | None = "physical-intelligence/libero"
    """LeRobot dataset: a Hugging Face repo id or a local folder."""
    extra_delta_transform: bool = False
    """Learn the first six action dims as deltas from the state (upstream's pi0_libero); the gripper stays absolute."""

    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        data_transforms = LIBERO_TRANSFORMS
        if self.extra_delta_transform:
            mask = transforms.make_bool_mask(6, -1)
            data_transforms = data_transforms.push(
                inputs=(transforms.DeltaActions(mask),), outputs=(transforms.AbsoluteActions(mask),)
            )
        return DataConfig(
            **self._lerobot_fields(assets_dirs, model_config),
            repack_transforms=LIBERO_REPACK,
            data_transforms=data_transforms,
            prompt_from_task=True,
            robot_action_dim=ACTION_DIM,
            robot_state_dim=STATE_DIM,
            observation_keys=OBSERVATION_KEYS,
        )


def make_libero_example() -> dict:
    """A random LIBERO observation, e.g. for smoke tests and clients."""
    rng = np.random.default_rng()
    return {
        "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/state": rng.random(STATE_DIM, dtype=np.float32),
        "prompt": "do something",
    }
