"""Resizing with padding, as upstream's training pipeline does it (``openpi_client.image_tools``): PIL resampling,
the resized size and the padding truncated with ``int()``, any number of leading batch axes.

The truncation is what the published checkpoints were trained on: rounding instead changes e.g. 480x848 -> 224x224
(126 rows of content from row 49, not 127 from row 48) and with it about half the pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_with_pad(
    images: np.ndarray, height: int, width: int, method: Image.Resampling = Image.Resampling.BILINEAR
) -> np.ndarray:
    """Resizes uint8 images ``[..., H, W, C]`` to fit ``height x width`` keeping their aspect ratio, centred on
    black; returns ``[..., height, width, C]`` (the input itself when it already has that size)."""
    images = np.asarray(images)
    if images.shape[-3:-1] == (height, width):
        return images
    flat = images.reshape(-1, *images.shape[-3:])  # [N, H, W, C]
    resized = np.stack([_resize_one(image, height, width, method) for image in flat])  # [N, height, width, C]
    return resized.reshape(*images.shape[:-3], height, width, images.shape[-1])


def _resize_one(image: np.ndarray, height: int, width: int, method: Image.Resampling) -> np.ndarray:
    cur_height, cur_width = image.shape[:2]
    ratio = max(cur_width / width, cur_height / height)
    resized_height, resized_width = max(1, int(cur_height / ratio)), max(1, int(cur_width / ratio))
    resized = np.asarray(Image.fromarray(image).resize((resized_width, resized_height), resample=method))
    top, left = int((height - resized_height) / 2), int((width - resized_width) / 2)
    out = np.zeros((height, width, image.shape[-1]), dtype=image.dtype)
    out[top : top + resized_height, left : left + resized_width] = resized.reshape(resized_height, resized_width, -1)
    return out
