"""DROID robot mapping: Franka arm with an exterior and a wrist camera, 7 joints + gripper, 8-dim actions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from openpi import transforms
from openpi.models import pi0_config
from openpi.policies.data_config import AssetsConfig, DataConfig, DataConfigFactory

ACTION_DIM = 8
STATE_DIM = 8  # 7 joint positions and the gripper
OBSERVATION_KEYS = (
    "observation/exterior_image_1_left",
    "observation/wrist_image_left",
    "observation/joint_position",
    "observation/gripper_position",
)


@dataclasses.dataclass(frozen=True)
class DroidInputs:
    """Maps a DROID observation (``observation/exterior_image_1_left``, ``observation/wrist_image_left``,
    ``observation/joint_position`` (7), ``observation/gripper_position`` (1)) to the model's layout."""

    def __call__(self, data: dict) -> dict:
        joints = np.asarray(data["observation/joint_position"], dtype=np.float32).reshape(-1)
        gripper = np.asarray(data["observation/gripper_position"], dtype=np.float32).reshape(-1)
        if joints.shape != (7,) or gripper.shape != (1,):
            raise ValueError(
                f"DROID expects 7 joint positions and 1 gripper position, got {joints.shape}, {gripper.shape}"
            )
        base = transforms.to_uint8_hwc(data["observation/exterior_image_1_left"], "observation/exterior_image_1_left")
        wrist = transforms.to_uint8_hwc(data["observation/wrist_image_left"], "observation/wrist_image_left")
        return transforms.single_arm_inputs(data, np.concatenate([joints, gripper]), base, wrist)


@dataclasses.dataclass(frozen=True)
class DroidOutputs:
    """Keeps the first 8 action dims (7 joint velocities + gripper)."""

    def __call__(self, data: dict) -> dict:
        return {"actions": np.asarray(data["actions"])[..., :ACTION_DIM]}


def make_droid_example() -> dict:
    """A random DROID observation."""
    rng = np.random.default_rng()
    return {
        "observation/exterior_image_1_left": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image_left": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/joint_position": rng.random(7, dtype=np.float32),
        "observation/gripper_position": rng.random(1, dtype=np.float32),
        "prompt": "do something",
    }


@dataclasses.dataclass(frozen=True)
class DroidDataConfig(DataConfigFactory):
    """DROID observations as the DROID client sends them (``observation/exterior_image_1_left``, ...).

    Training data must be stored under the same keys (plus ``actions`` and ``prompt``); norm stats are read from
    ``assets_dir/asset_id``.
    """

    assets: AssetsConfig = dataclasses.field(default_factory=lambda: AssetsConfig(asset_id="droid"))

    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        return DataConfig(
            **self._lerobot_fields(assets_dirs, model_config),
            data_transforms=transforms.Group(inputs=(DroidInputs(),), outputs=(DroidOutputs(),)),
            robot_action_dim=ACTION_DIM,
            robot_state_dim=STATE_DIM,
            observation_keys=OBSERVATION_KEYS,
        )
