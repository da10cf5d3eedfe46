"""LIBERO robot mapping: Franka arm with a third-person and a wrist camera, 8-dim state, 7-dim actions."""

from __future__ import annotations

import dataclasses

import numpy as np

from openpi import transforms

ACTION_DIM = 7
STATE_DIM = 8


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


def make_libero_example() -> dict:
    """A random LIBERO observation, e.g. for smoke tests and clients."""
    rng = np.random.default_rng()
    return {
        "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/state": rng.random(STATE_DIM, dtype=np.float32),
        "prompt": "do something",
    }
