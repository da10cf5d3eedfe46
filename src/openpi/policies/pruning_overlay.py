"""Pictures of a pruner's choice: the kept patches over the camera frame, and the votes as a heat-map."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from openpi.models.observation import Observation
from openpi.models.variants import SiglipConfig
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies.pytorch_model import last_patch_selection

KEPT_OUTLINE = (255, 230, 0)
DIMMED = 0.3  # brightness of the patches that were dropped


def overlay_kept_patches(image: np.ndarray, kept: np.ndarray, patch_size: int, scale: int = 3) -> Image.Image:
    """``image`` (uint8 ``[S, S, 3]`` at the model's resolution) with dropped patches dimmed and kept ones outlined;
    ``kept`` is ``[(S // patch_size) ** 2]`` bool in row-major patch order."""
    side = image.shape[0] // patch_size
    cell = np.kron(kept.reshape(side, side), np.ones((patch_size, patch_size)))  # [S, S]
    shown = image.astype(np.float32) * np.where(cell[..., None] > 0, 1.0, DIMMED)
    picture = Image.fromarray(shown.astype(np.uint8)).resize((image.shape[1] * scale, image.shape[0] * scale))
    draw = ImageDraw.Draw(picture)
    step = patch_size * scale
    for index in np.flatnonzero(kept):
        row, col = divmod(int(index), side)
        draw.rectangle([col * step, row * step, (col + 1) * step - 1, (row + 1) * step - 1], outline=KEPT_OUTLINE)
    return picture


def vote_heatmap(votes: np.ndarray, image_size: int, scale: int = 3) -> Image.Image:
    """``votes`` (``[(S // patch) ** 2]``, how many patches voted for each) as a black-to-red-to-yellow heat-map."""
    side = math.isqrt(votes.size)
    level = votes.reshape(side, side).astype(np.float32) / max(1.0, float(votes.max()))
    rgb = np.stack([np.clip(2 * level, 0, 1), np.clip(2 * level - 1, 0, 1), np.zeros_like(level)], axis=-1)
    size = image_size * scale
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize((size, size), resample=Image.Resampling.NEAREST)


def side_by_side(panels: list[Image.Image], gap: int = 6) -> Image.Image:
    """The panels left to right on a white background."""
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    return canvas


@torch.no_grad()
def kept_patch_pictures(model: PI0Pytorch, observation: Observation) -> dict[str, Image.Image]:
    """What the pruner keeps for the first sample of ``observation`` at inference: per present camera, the frame with
    the kept patches outlined beside the votes. Runs the prefix once in eval mode and restores the model's mode."""
    was_training = model.training
    model.eval()
    try:
        model.encode_prefix(observation.select(slice(0, 1)))
    finally:
        model.train(was_training)
    selection = last_patch_selection(model)
    return selection_pictures(observation, selection.kept[0], selection.votes[0], model.config.vision_config)


def selection_pictures(
    observation: Observation, kept: np.ndarray, votes: np.ndarray, vision: SiglipConfig
) -> dict[str, Image.Image]:
    """Per present camera of the first sample: the frame with the ``kept [N]`` patches outlined beside the ``votes
    [N]`` (pooled patches, camera-major), whichever model made the selection."""
    per_camera = vision.num_patches
    pictures = {}
    for slot, (name, image) in enumerate(observation.images.items()):
        if not bool(observation.image_masks[name][0]):
            continue
        frame = ((image[0].float().cpu() + 1.0) * 127.5).clamp(0, 255).byte().permute(1, 2, 0).numpy()
        part = slice(slot * per_camera, (slot + 1) * per_camera)
        pictures[name] = side_by_side(
            [overlay_kept_patches(frame, kept[part], vision.patch_size), vote_heatmap(votes[part], vision.image_size)]
        )
    return pictures
