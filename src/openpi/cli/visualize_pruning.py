"""Pictures of what a pruning policy keeps on a shapes scene (``scripts/visualize_pruning.py``): one PNG per camera,
frame | kept patches | votes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from openpi.envs import rollout
from openpi.envs.shapes import Scene, ShapesEnv
from openpi.evaluation.closed_loop import PolicyArgs
from openpi.models.batch import IMAGE_KEYS
from openpi.policies import policy_config
from openpi.shared.image_tools import resize_with_pad
from openpi.training import config as _config


@dataclasses.dataclass
class Args:
    policy: PolicyArgs = dataclasses.field(default_factory=PolicyArgs)
    """The checkpoint to draw (a *_lightvla shapes config)."""
    env_seed: int = 1_000_000_000
    """Seed of the scene drawn."""
    prompt_object: int | None = None
    """Ask for this object of the scene (its index) instead of the scene's target."""
    token_prune_keep_ratio: float | None = None
    """Serve with this fraction of the valid patches (None: the config's budget)."""
    output_dir: Path = Path("outputs/pruning_pictures")
    """Folder of the PNGs."""


def draw(args: Args) -> list[Path]:
    """Writes the pictures of ``args.env_seed``'s scene to ``args.output_dir`` and prints their paths; returns them."""
    from openpi.policies.pruning_overlay import overlay_kept_patches, side_by_side, vote_heatmap  # torch: not at --help

    train_config = _config.get_config(args.policy.config)
    train_config.data.prepare()  # the testbed's tokenizer
    policy = policy_config.create_trained_policy(train_config, args.policy.dir, pytorch_device="cpu")
    if not policy.model.token_pruning_enabled:
        raise ValueError(f"{args.policy.config} does not prune; pick a *_lightvla config")
    policy.model.set_token_pruner_keep_ratio(args.token_prune_keep_ratio)
    policy.return_kept_patches = True
    env = ShapesEnv(train_config.data.spec.task)
    env.reset(args.env_seed)
    if args.prompt_object is not None:
        env.set_scene(Scene(env.scene.objects, args.prompt_object))
    observation = env.observation()
    output = policy.infer(observation)
    vision = train_config.model.vision_config
    grid = rollout.PatchGrid(vision.image_size, vision.patch_size)
    votes = policy.last_patch_selection.votes[0]
    kept = np.asarray(output["kept_patch_mask"], dtype=bool)
    score = rollout.score_kept_patches(kept, grid.object_coverage(env.masks()), env.scene.target)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for slot, camera in enumerate(grid.cameras):
        frame = _at_model_resolution(observation[f"observation/{camera}"], vision.image_size)
        part = slice(slot * grid.patches_per_slot, (slot + 1) * grid.patches_per_slot)
        picture = side_by_side(
            [
                overlay_kept_patches(frame, np.ones(grid.patches_per_slot, dtype=bool), vision.patch_size),
                overlay_kept_patches(frame, kept[part], vision.patch_size),
                vote_heatmap(votes[part], vision.image_size),
            ]
        )
        path = args.output_dir / f"seed{args.env_seed}_{IMAGE_KEYS[slot]}.png"
        picture.save(path)
        paths.append(path)
        print(path)
    print(
        f"prompt: {observation['prompt']!r}; kept {score.kept} patches; target recall {score.target_recall:.2f} "
        f"(of its pixels {score.target_pixel_recall:.2f}); kept on objects {score.on_object:.2f}"
    )
    return paths


def _at_model_resolution(image: np.ndarray, size: int) -> np.ndarray:
    return resize_with_pad(np.asarray(image), size, size)
