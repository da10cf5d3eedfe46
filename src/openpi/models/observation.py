"""The model's input: camera images, robot state and the tokenized prompt, as torch tensors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from openpi.models.batch import IMAGE_KEYS
from openpi.models.pi0_config import Pi0Config


@dataclasses.dataclass
class Observation:
    """A batch of observations.

    Attributes:
        images: camera name -> float images ``[B, 3, H, W]`` in [-1, 1]; the prefix follows the dict's order.
        image_masks: camera name -> bool ``[B]``; False marks a camera that is absent for that sample.
        state: ``[B, S]`` robot state (normalised, padded to the action dimension).
        tokenized_prompt: ``[B, L]`` int token ids, right padded.
        tokenized_prompt_mask: ``[B, L]`` bool, True for real tokens.
        token_ar_mask: ``[B, L]`` int, 1 on π0-FAST's causal postfix (None for π0 / π0.5).
        token_loss_mask: ``[B, L]`` bool, the tokens π0-FAST's loss predicts (None for π0 / π0.5).
    """

    images: dict[str, torch.Tensor]
    image_masks: dict[str, torch.Tensor]
    state: torch.Tensor
    tokenized_prompt: torch.Tensor | None = None
    tokenized_prompt_mask: torch.Tensor | None = None
    token_ar_mask: torch.Tensor | None = None
    token_loss_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        missing = set(self.images) - set(self.image_masks)
        if missing:
            raise ValueError(f"Observation has images without image_masks: {sorted(missing)}")
        if (self.tokenized_prompt is None) != (self.tokenized_prompt_mask is None):
            raise ValueError("tokenized_prompt and tokenized_prompt_mask must be given together")

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Observation:
        """Builds an observation from a transformed sample dict (``image``, ``image_mask``, ``state``, ...).

        Images may be uint8 in [0, 255] or float in [-1, 1], channels-last ``[B, H, W, 3]`` or channels-first.
        """
        images = {name: _to_float_chw(_as_tensor(img)) for name, img in data["image"].items()}
        masks = data.get("image_mask")
        if masks is None:
            masks = {name: torch.ones(img.shape[0], dtype=torch.bool) for name, img in images.items()}
        image_masks = {name: _as_tensor(m).bool() for name, m in masks.items()}
        prompt = data.get("tokenized_prompt")
        prompt_mask = data.get("tokenized_prompt_mask")
        ar_mask, loss_mask = data.get("token_ar_mask"), data.get("token_loss_mask")
        return cls(
            images=images,
            image_masks=image_masks,
            state=_as_tensor(data["state"]).float(),
            tokenized_prompt=None if prompt is None else _as_tensor(prompt).long(),
            tokenized_prompt_mask=None if prompt_mask is None else _as_tensor(prompt_mask).bool(),
            token_ar_mask=None if ar_mask is None else _as_tensor(ar_mask).long(),
            token_loss_mask=None if loss_mask is None else _as_tensor(loss_mask).bool(),
        )

    def to_dict(self) -> dict[str, Any]:
        """The batch as numpy arrays, in the form :meth:`from_dict` reads (images channels-first, float)."""

        def numpy(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else t.detach().cpu().numpy()

        return {
            "image": {name: numpy(image) for name, image in self.images.items()},
            "image_mask": {name: numpy(mask) for name, mask in self.image_masks.items()},
            "state": numpy(self.state),
            "tokenized_prompt": numpy(self.tokenized_prompt),
            "tokenized_prompt_mask": numpy(self.tokenized_prompt_mask),
            **({} if self.token_ar_mask is None else {"token_ar_mask": numpy(self.token_ar_mask)}),
            **({} if self.token_loss_mask is None else {"token_loss_mask": numpy(self.token_loss_mask)}),
        }

    def select(self, index: slice) -> Observation:
        """The observations of the samples ``index`` of the batch."""
        return self.map(lambda t: t[index])

    def to(self, device: torch.device | str) -> Observation:
        """Returns a copy with every tensor on ``device``."""
        return self.map(lambda t: t.to(device))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Observation:
        """Applies ``fn`` to every tensor (images, masks, state, prompt)."""

        def apply(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else fn(t)

        return Observation(
            images={k: fn(v) for k, v in self.images.items()},
            image_masks={k: fn(v) for k, v in self.image_masks.items()},
            state=fn(self.state),
            tokenized_prompt=apply(self.tokenized_prompt),
            tokenized_prompt_mask=apply(self.tokenized_prompt_mask),
            token_ar_mask=apply(self.token_ar_mask),
            token_loss_mask=apply(self.token_loss_mask),
        )


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _to_float_chw(image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 4:
        raise ValueError(f"Expected a batch of images [B, H, W, 3] or [B, 3, H, W], got shape {tuple(image.shape)}")
    if image.shape[-1] == 3 and image.shape[1] != 3:
        image = image.permute(0, 3, 1, 2)
    if image.dtype == torch.uint8:
        return image.float() / 127.5 - 1.0
    return image.float()


def random_observation(
    config: Pi0Config,
    batch_size: int = 1,
    *,
    num_cameras: int = len(IMAGE_KEYS),
    valid_prompt_tokens: int | None = None,
    seed: int = 0,
) -> Observation:
    """A random, model-ready observation for ``config``: images at the vision tower's resolution, state ``[B,
    action_dim]``, a ``max_token_len`` prompt of random ids whose first ``valid_prompt_tokens`` (default all) are
    valid. For tests, benchmarks and demos."""
    gen = torch.Generator().manual_seed(seed)
    size, length = config.vision_config.image_size, int(config.max_token_len)
    valid = length if valid_prompt_tokens is None else valid_prompt_tokens
    names = IMAGE_KEYS[:num_cameras]
    return Observation(
        images={name: torch.rand(batch_size, 3, size, size, generator=gen) * 2 - 1 for name in names},
        image_masks={name: torch.ones(batch_size, dtype=torch.bool) for name in names},
        state=torch.randn(batch_size, config.action_dim, generator=gen),
        tokenized_prompt=torch.randint(0, config.vocab_size, (batch_size, length), generator=gen),
        tokenized_prompt_mask=torch.arange(length)[None].expand(batch_size, -1) < valid,
    )
