"""The model's input at the JAX boundary: the same fields as :class:`openpi.models.observation.Observation`, as
numpy/JAX arrays with channels-last images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import numpy as np

from openpi.models.observation import Observation


@flax.struct.dataclass
class JaxObservation:
    """A batch of observations (a pytree).

    Attributes:
        images: camera name -> float images ``[B, H, W, 3]`` in [-1, 1]; the prefix follows the dict's order.
        image_masks: camera name -> bool ``[B]``.
        state: ``[B, action_dim]`` float.
        tokenized_prompt: ``[B, L]`` int32 token ids, right padded.
        tokenized_prompt_mask: ``[B, L]`` bool.
    """

    images: dict[str, jax.Array]
    image_masks: dict[str, jax.Array]
    state: jax.Array
    tokenized_prompt: jax.Array
    tokenized_prompt_mask: jax.Array

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    @classmethod
    def from_observation(cls, observation: Observation) -> JaxObservation:
        """Converts the PyTorch-side observation (channels-first images) to the JAX boundary's form."""
        if observation.tokenized_prompt is None or observation.tokenized_prompt_mask is None:
            raise ValueError("The observation has no tokenized_prompt; run the TokenizePrompt transform first")

        def numpy(t: Any) -> np.ndarray:
            return t.detach().cpu().numpy()

        return cls(
            images={k: np.ascontiguousarray(numpy(v).transpose(0, 2, 3, 1)) for k, v in observation.images.items()},
            image_masks={k: numpy(v).astype(bool) for k, v in observation.image_masks.items()},
            state=numpy(observation.state).astype(np.float32),
            tokenized_prompt=numpy(observation.tokenized_prompt).astype(np.int32),
            tokenized_prompt_mask=numpy(observation.tokenized_prompt_mask).astype(bool),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JaxObservation:
        """From a transformed sample dict (``image``, ``image_mask``, ``state``, ``tokenized_prompt``, ...); uint8
        images are scaled to [-1, 1], channels-first ones transposed."""
        return cls.from_observation(Observation.from_dict(data))

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
