"""Pictures of the pruner's choice (scripts/visualize_pruning.py and the training's wandb pictures)."""

from __future__ import annotations

import numpy as np
import torch

from openpi.models.observation import random_observation
from openpi.models.pi0_config import tiny_config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies.pruning_overlay import kept_patch_pictures, overlay_kept_patches


def test_training_pictures_cover_present_cameras_and_keep_the_mode():
    config = tiny_config(vision_variant="tiny_112", token_pruning_enabled=True)
    model = PI0Pytorch(config).train()
    observation = random_observation(config, 2, num_cameras=3)
    observation.image_masks["right_wrist_0_rgb"][:] = False
    pictures = kept_patch_pictures(model, observation)
    assert set(pictures) == {"base_0_rgb", "left_wrist_0_rgb"}, "absent cameras are not drawn"
    assert model.training, "the model is back in train mode"
    assert all(p.size[1] == 112 * 3 for p in pictures.values())


def test_overlay_dims_the_dropped_patches_and_keeps_the_kept_ones():
    image = np.full((28, 28, 3), 200, dtype=np.uint8)
    kept = np.array([True, False, False, False])
    picture = np.asarray(overlay_kept_patches(image, kept, patch_size=14, scale=1))
    assert picture[7, 7].tolist() == [200, 200, 200] and picture[20, 20].tolist() == [60, 60, 60]
    assert torch.tensor(picture[0, 0]).tolist() == [255, 230, 0], "the kept patch is outlined"
