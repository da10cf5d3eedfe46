"""The model's input batch as the data pipeline produces it, before either framework takes it.

A batch is a dict of numpy arrays with a leading batch axis: ``image`` (camera name -> ``[B, H, W, 3]`` uint8 or float
in [-1, 1]), ``image_mask`` (camera name -> ``[B]`` bool), ``state`` ``[B, S]``, ``tokenized_prompt`` ``[B, L]`` int
and ``tokenized_prompt_mask`` ``[B, L]`` bool. Each framework turns it into its own observation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from openpi.models.pi0_config import Pi0Config

# Camera names the model is trained with, in prefix order. Robot-specific transforms map their cameras onto these.
IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


def check_image_resolution(camera: str, size: tuple[int, ...], resolution: tuple[int, int]) -> None:
    """Raises ValueError unless ``camera``'s images are ``resolution`` (height, width): the data pipeline's
    ``ResizeImages`` step is the one place images are resized."""
    if tuple(size) != tuple(resolution):
        raise ValueError(
            f"Camera {camera!r} is {tuple(size)} px; the vision tower takes {tuple(resolution)}. The model does not "
            "resize: the data pipeline's ResizeImages step does (openpi.policies.pipeline), or call "
            "openpi.shared.image_tools.resize_with_pad on uint8 images first."
        )


def random_batch(config: Pi0Config, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """A random batch for ``config``: every camera at the vision tower's resolution, a full ``max_token_len`` prompt
    (e.g. to warm a model up at the shapes it serves)."""
    rng = np.random.default_rng(seed)
    size, length = config.vision_config.image_size, int(config.max_token_len)
    return {
        "image": {name: rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8) for name in IMAGE_KEYS},
        "image_mask": {name: np.ones(batch_size, dtype=bool) for name in IMAGE_KEYS},
        "state": rng.standard_normal((batch_size, config.action_dim)).astype(np.float32),
        "tokenized_prompt": rng.integers(0, config.vocab_size, (batch_size, length), dtype=np.int32),
        "tokenized_prompt_mask": np.ones((batch_size, length), dtype=bool),
    }
