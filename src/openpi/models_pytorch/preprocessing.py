"""Batched torch image preprocessing: the resolution check and training augmentation.

Images are float tensors ``[B, 3, H, W]`` in [-1, 1] (channels first). They arrive already at the vision tower's
resolution: the data pipeline's ``ResizeImages`` step is the one place images are resized.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from openpi.models.batch import check_image_resolution
from openpi.models.observation import Observation

CROP_FRACTION = 0.95
MAX_ROTATION_DEGREES = 5.0
BRIGHTNESS_RANGE = (0.7, 1.3)
CONTRAST_RANGE = (0.6, 1.4)
SATURATION_RANGE = (0.5, 1.5)
# ITU-R BT.601 luma weights used for the grey image.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def augment_images(
    images: dict[str, torch.Tensor], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Training augmentation with independent random parameters per camera and per sample.

    Cameras whose name does not contain ``"wrist"`` get a random 95% crop resized back to full size and a random
    rotation in [-5°, 5°]; every camera gets brightness, contrast and saturation jitter. Output is clamped to [-1, 1].
    """
    augmented = {}
    for name, image in images.items():
        _check_images(image)
        out = image.float()
        if "wrist" not in name:
            out = _random_crop_and_rotate(out, generator)
        out = _random_color_jitter(out, generator)
        augmented[name] = out.clamp(-1.0, 1.0).to(image.dtype)
    return augmented


def preprocess_observation(
    observation: Observation,
    *,
    train: bool,
    image_resolution: tuple[int, int],
    generator: torch.Generator | None = None,
) -> Observation:
    """Checks that every image is ``image_resolution`` (height, width) and, when ``train``, augments them.

    Raises:
        ValueError: an image is not ``[B, 3, height, width]`` (the pipeline resizes to the vision tower's size).
    """
    for name, image in observation.images.items():
        _check_images(image)
        check_image_resolution(name, image.shape[-2:], image_resolution)
    if not train:
        return observation
    return dataclasses.replace(observation, images=augment_images(observation.images, generator))


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected images [B, 3, H, W], got shape {tuple(images.shape)}")


def _uniform(
    batch_size: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Draws ``[B]`` uniform samples in [low, high) on ``like``'s device."""
    device = generator.device if generator is not None else like.device
    sample = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float32)
    return (low + (high - low) * sample).to(like.device)


def _random_crop_and_rotate(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Samples a random crop (CROP_FRACTION of each side), resized to full size and rotated, in one resampling."""
    batch_size, _, height, width = images.shape
    max_shift = 1.0 - CROP_FRACTION  # crop centre offset range in normalised [-1, 1] coordinates
    shift_x = _uniform(batch_size, -max_shift, max_shift, images, generator)
    shift_y = _uniform(batch_size, -max_shift, max_shift, images, generator)
    max_angle = math.radians(MAX_ROTATION_DEGREES)
    angle = _uniform(batch_size, -max_angle, max_angle, images, generator)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Rotation in pixel space expressed in normalised coordinates (x spans the width, y the height).
    theta = torch.zeros(batch_size, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = CROP_FRACTION * cos
    theta[:, 0, 1] = -CROP_FRACTION * sin * height / width
    theta[:, 1, 0] = CROP_FRACTION * sin * width / height
    theta[:, 1, 1] = CROP_FRACTION * cos
    theta[:, 0, 2] = shift_x
    theta[:, 1, 2] = shift_y
    grid = F.affine_grid(theta, [batch_size, 3, height, width], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _random_color_jitter(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Applies brightness, contrast and saturation jitter (in that order) in [0, 1] space."""
    batch_size = images.shape[0]
    brightness = _uniform(batch_size, *BRIGHTNESS_RANGE, images, generator).view(-1, 1, 1, 1)
    contrast = _uniform(batch_size, *CONTRAST_RANGE, images, generator).view(-1, 1, 1, 1)
    saturation = _uniform(batch_size, *SATURATION_RANGE, images, generator).view(-1, 1, 1, 1)
    pixels = (images + 1.0) / 2.0
    pixels = (pixels * brightness).clamp(0.0, 1.0)
    mean = _grey(pixels).mean(dim=(1, 2, 3), keepdim=True)
    pixels = (mean + contrast * (pixels - mean)).clamp(0.0, 1.0)
    grey = _grey(pixels)
    pixels = (grey + saturation * (pixels - grey)).clamp(0.0, 1.0)
    return pixels * 2.0 - 1.0


def _grey(pixels: torch.Tensor) -> torch.Tensor:
    """Luma of ``[B, 3, H, W]`` images as ``[B, 1, H, W]``."""
    weights = torch.tensor(_LUMA_WEIGHTS, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels * weights).sum(dim=1, keepdim=True)
