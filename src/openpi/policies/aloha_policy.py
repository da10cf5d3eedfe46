"""ALOHA robot mapping: two 6-joint arms with grippers (14-dim state and actions) and up to four cameras.

With ``adapt_to_pi`` the joint signs and the gripper encoding are converted between the ALOHA convention and the
one the published π0 / π0.5 base models were trained with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from openpi import transforms
from openpi.models import pi0_config
from openpi.policies.data_config import DataConfig, DataConfigFactory

ACTION_DIM = 14
GRIPPER_DIMS = (6, 13)
JOINT_FLIP_MASK = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], dtype=np.float32)
CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
OBSERVATION_KEYS = ("state", *(f"images/{camera}" for camera in CAMERAS))
# Model camera slot -> ALOHA camera; cam_low is accepted but not used by the model.
CAMERA_SLOTS = {"base_0_rgb": "cam_high", "left_wrist_0_rgb": "cam_left_wrist", "right_wrist_0_rgb": "cam_right_wrist"}

# Gripper geometry and ranges (Interbotix ALOHA gripper vs. the π0 training convention).
GRIPPER_LINEAR_RANGE = (0.01844, 0.05800)
GRIPPER_ARM_LENGTH = 0.036
GRIPPER_HORN_RADIUS = 0.022
GRIPPER_ANGLE_RANGE = (0.5476, 1.6296)
GRIPPER_ACTION_OFFSET = 0.5476
GRIPPER_ACTION_RANGE = (-0.6213, 1.4910)


def _normalize(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return (x - low) / (high - low)


def _unnormalize(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return x * (high - low) + low


def gripper_state_to_pi(value: np.ndarray) -> np.ndarray:
    """ALOHA normalised linear gripper position -> normalised horn angle seen by π0."""
    linear = _unnormalize(value, *GRIPPER_LINEAR_RANGE)
    ratio = (GRIPPER_HORN_RADIUS**2 + linear**2 - GRIPPER_ARM_LENGTH**2) / (2 * GRIPPER_HORN_RADIUS * linear)
    angle = np.arcsin(np.clip(ratio, -1.0, 1.0))
    return _normalize(angle, *GRIPPER_ANGLE_RANGE)


def gripper_action_to_aloha(value: np.ndarray) -> np.ndarray:
    """π0 gripper action -> ALOHA gripper command."""
    return _normalize(value + GRIPPER_ACTION_OFFSET, *GRIPPER_ACTION_RANGE)


def gripper_action_to_pi(value: np.ndarray) -> np.ndarray:
    """ALOHA gripper command -> π0 gripper action (inverse of :func:`gripper_action_to_aloha`)."""
    return _unnormalize(value, *GRIPPER_ACTION_RANGE) - GRIPPER_ACTION_OFFSET


def _map_grippers(x: np.ndarray, fn) -> np.ndarray:
    x = np.array(x, dtype=np.float32)
    for dim in GRIPPER_DIMS:
        x[..., dim] = fn(x[..., dim])
    return x


def state_to_pi(state: np.ndarray) -> np.ndarray:
    """ALOHA state (14) -> π0 convention: joint sign flips and gripper angle."""
    return _map_grippers(np.asarray(state, dtype=np.float32) * JOINT_FLIP_MASK, gripper_state_to_pi)


def actions_to_pi(actions: np.ndarray) -> np.ndarray:
    """ALOHA actions ``[..., 14]`` -> π0 convention (training targets)."""
    return _map_grippers(np.asarray(actions, dtype=np.float32) * JOINT_FLIP_MASK, gripper_action_to_pi)


def actions_to_aloha(actions: np.ndarray) -> np.ndarray:
    """π0 actions ``[..., 14]`` -> ALOHA convention (inverse of :func:`actions_to_pi`)."""
    return _map_grippers(np.asarray(actions, dtype=np.float32), gripper_action_to_aloha) * JOINT_FLIP_MASK


@dataclasses.dataclass(frozen=True)
class AlohaInputs:
    """Maps an ALOHA observation (``state`` (14), ``images`` dict of cameras, optional ``actions``, ``prompt``).

    cam_high is required; a missing wrist camera becomes a black image with mask False.
    """

    adapt_to_pi: bool = True

    def __call__(self, data: dict) -> dict:
        images = data["images"]
        unknown = set(images) - set(CAMERAS)
        if unknown:
            raise ValueError(f"Unknown ALOHA cameras {sorted(unknown)}; expected a subset of {CAMERAS}")
        if "cam_high" not in images:
            raise KeyError(f"ALOHA observation needs images['cam_high']; got {sorted(images)}")
        base = transforms.to_uint8_hwc(images["cam_high"], "images/cam_high")
        out_images, masks = {}, {}
        for slot, camera in CAMERA_SLOTS.items():
            present = camera in images
            out_images[slot] = (
                transforms.to_uint8_hwc(images[camera], f"images/{camera}") if present else np.zeros_like(base)
            )
            masks[slot] = np.bool_(present)
        state = np.asarray(data["state"], dtype=np.float32)
        if state.shape[-1] != ACTION_DIM:
            raise ValueError(f"ALOHA state must have {ACTION_DIM} dims, got shape {state.shape}")
        out = {
            "state": state_to_pi(state) if self.adapt_to_pi else state,
            "image": out_images,
            "image_mask": masks,
        }
        if "actions" in data:
            actions = np.asarray(data["actions"], dtype=np.float32)
            out["actions"] = actions_to_pi(actions) if self.adapt_to_pi else actions
        if "prompt" in data:
            out["prompt"] = data["prompt"]
        return out


@dataclasses.dataclass(frozen=True)
class AlohaOutputs:
    """Keeps the first 14 action dims and, with ``adapt_to_pi``, converts them back to the ALOHA convention."""

    adapt_to_pi: bool = True

    def __call__(self, data: dict) -> dict:
        actions = np.asarray(data["actions"], dtype=np.float32)[..., :ACTION_DIM]
        return {"actions": actions_to_aloha(actions) if self.adapt_to_pi else actions}


def make_aloha_example() -> dict:
    """A random ALOHA observation with all four cameras (channels-first, as ALOHA records them)."""
    rng = np.random.default_rng()
    return {
        "state": np.ones((ACTION_DIM,), dtype=np.float32),
        "images": {camera: rng.integers(0, 256, (3, 224, 224), dtype=np.uint8) for camera in CAMERAS},
        "prompt": "do something",
    }


@dataclasses.dataclass(frozen=True)
class LeRobotAlohaDataConfig(DataConfigFactory):
    """ALOHA in LeRobot format (``observation.images.<camera>``, ``observation.state``, ``action``).

    ``use_delta_joint_actions`` trains on joint deltas from the current state (grippers stay absolute), as the
    published ALOHA models do; ``adapt_to_pi`` converts joint signs and gripper encoding (see AlohaInputs).
    """

    cameras: tuple[str, ...] = ("cam_high", "cam_left_wrist", "cam_right_wrist")
    """ALOHA cameras the dataset has."""
    camera_keys: dict[str, str] | None = None
    """Dataset image key suffix per ALOHA camera when they differ (e.g. the simulator's {"cam_high": "top"})."""
    adapt_to_pi: bool = True
    """Convert joint signs and the gripper encoding between ALOHA's and the published models' (see AlohaInputs)."""
    use_delta_joint_actions: bool = True
    """Learn joint actions as deltas from the current state (grippers stay absolute), as the published models do."""
    prompt_from_task: bool = True
    """Use the LeRobot task text as the prompt."""

    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        repack = {
            "images": {camera: f"observation.images.{key}" for camera, key in self._camera_keys().items()},
            "state": "observation.state",
            "actions": "action",
        }
        if self.prompt_from_task:
            repack["prompt"] = "prompt"
        data_transforms = transforms.Group(
            inputs=(AlohaInputs(adapt_to_pi=self.adapt_to_pi),), outputs=(AlohaOutputs(adapt_to_pi=self.adapt_to_pi),)
        )
        if self.use_delta_joint_actions:
            mask = transforms.make_bool_mask(6, -1, 6, -1)
            data_transforms = data_transforms.push(
                inputs=(transforms.DeltaActions(mask),), outputs=(transforms.AbsoluteActions(mask),)
            )
        return DataConfig(
            **self._lerobot_fields(assets_dirs, model_config),
            repack_transforms=transforms.Group(inputs=(transforms.RepackTransform(repack),)),
            data_transforms=data_transforms,
            action_sequence_keys=("action",),
            prompt_from_task=self.prompt_from_task,
            robot_action_dim=ACTION_DIM,
            robot_state_dim=ACTION_DIM,
            observation_keys=OBSERVATION_KEYS,
        )

    def _camera_keys(self) -> dict[str, str]:
        return dict(self.camera_keys) if self.camera_keys else {camera: camera for camera in self.cameras}
