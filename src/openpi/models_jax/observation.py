"""The model's input at the JAX boundary: a batch (:mod:`openpi.models.batch`) as numpy/JAX arrays with channels-last
float images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import numpy as np


@flax.struct.dataclass
class JaxObservation:
    """A batch of observations (a pytree).

    Attributes:
        images: camera name -> float images ``[B, H, W, 3]`` in [-1, 1]; the prefix follows the dict's order.
        image_masks: camera name -> bool ``[B]``.
        state: ``[B, action_dim]`` float.
        tokenized_prompt: ``[B, L]`` int32 token ids, right padded.
        tokenized_prompt_mask: ``[B, L]`` bool.
        token_ar_mask: ``[B, L]`` int32, 1 on π0-FAST's causal postfix (None for π0 / π0.5).
        token_loss_mask: ``[B, L]`` bool, the tokens π0-FAST's loss predicts (None for π0 / π0.5).
    """

    images: dict[str, jax.Array]
    image_masks: dict[str, jax.Array]
    state: jax.Array
    tokenized_prompt: jax.Array
    tokenized_prompt_mask: jax.Array
    token_ar_mask: jax.Array | None = None
    token_loss_mask: jax.Array | None = None

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JaxObservation:
        """From a batch dict of numpy arrays (``image``, ``image_mask``, ``state``, ``tokenized_prompt``,
        ``tokenized_prompt_mask``); uint8 images are scaled to [-1, 1], channels-first ones transposed. Without
        ``image_mask`` every camera is present."""
        prompt, prompt_mask = data.get("tokenized_prompt"), data.get("tokenized_prompt_mask")
        if prompt is None or prompt_mask is None:
            raise ValueError("The observation has no tokenized_prompt; run the TokenizePrompt transform first")
        images = {name: _float_channels_last(np.asarray(image)) for name, image in data["image"].items()}
        masks = data.get("image_mask") or {name: np.ones(len(image), dtype=bool) for name, image in images.items()}
        return cls(
            images=images,
            image_masks={name: np.asarray(mask).astype(bool) for name, mask in masks.items()},
            state=np.asarray(data["state"]).astype(np.float32),
            tokenized_prompt=np.asarray(prompt).astype(np.int32),
            tokenized_prompt_mask=np.asarray(prompt_mask).astype(bool),
            token_ar_mask=_optional(data.get("token_ar_mask"), np.int32),
            token_loss_mask=_optional(data.get("token_loss_mask"), bool),
        )

    def trim_prompt_padding(self, multiple: int | None) -> JaxObservation:
        """Cuts the prompt columns after the batch's last valid token, keeping a multiple of ``multiple`` (exact:
        padding is never attended to). A host-side step: the kept length becomes a static shape."""
        masks = np.asarray(self.tokenized_prompt_mask)
        if multiple is None or masks.shape[1] == 0:
            return self
        valid_columns = np.flatnonzero(masks.any(axis=0))
        last = int(valid_columns[-1]) + 1 if valid_columns.size else 0
        keep = min(max(-(-last // multiple) * multiple, multiple), masks.shape[1])
        return self.replace(
            tokenized_prompt=self.tokenized_prompt[:, :keep], tokenized_prompt_mask=self.tokenized_prompt_mask[:, :keep]
        )


def _optional(array: Any, dtype: Any) -> np.ndarray | None:
    return None if array is None else np.asarray(array).astype(dtype)


def _float_channels_last(image: np.ndarray) -> np.ndarray:
    """``[B, H, W, 3]`` or ``[B, 3, H, W]`` images, uint8 or float in [-1, 1] -> float32 ``[B, H, W, 3]``."""
    if image.ndim != 4:
        raise ValueError(f"Expected a batch of images [B, H, W, 3] or [B, 3, H, W], got shape {image.shape}")
    if not (image.shape[-1] == 3 and image.shape[1] != 3):  # channels-first, read as the PyTorch observation reads it
        image = image.transpose(0, 2, 3, 1)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image.astype(np.float32) / 127.5 - 1.0)
    return np.ascontiguousarray(image, dtype=np.float32)
