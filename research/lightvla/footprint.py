"""How the named target falls on the model's patch grid in the shapes testbed, and what target recall can say.

Target recall counts every patch the target touches, however little of it; pixel recall weighs each by the share of
the target's pixels it holds (``openpi.envs.rollout.score_kept_patches``). This measures, on held-out scenes, how many
patches the target touches per camera, how many of them it only grazes, and the two recalls of oracle kept sets that
keep the target's most-covered patches and nothing else: the recall a pruner that sees the whole target in a few
patches can have. No model is involved.

    uv run python -m research.lightvla.footprint --objects 1 --scenes 2000 \
        --output research/lightvla/results/target_footprint.md

The third-person camera is scored at each scene's start; the wrist camera with the effector over the target's centre
(where the policy closes the gripper).
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import numpy as np
import tqdm
import tyro

from openpi.envs import rollout
from openpi.envs.shapes import ShapesEnv, ShapesTask

GRAZED = (0.10, 0.25, 0.50)  # coverage thresholds: a patch holding less of the target than this share of its pixels
TOP_PATCHES = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class Args:
    objects: int = 1
    """Objects per scene."""
    scenes: int = 2000
    """Held-out scenes to measure."""
    image_size: int = 112
    """Model image size (the testbed's ``tiny_112`` and local towers)."""
    patch_size: int = 14
    output: Path = Path("research/lightvla/results/target_footprint.md")


def camera_footprint(coverage: np.ndarray, target: int) -> dict[str, float]:
    """One camera's ``[num_objects, P]`` coverage: the target's patch count, its grazed patches, and the recalls of
    keeping its ``k`` most-covered patches."""
    row = coverage[target]
    touched = row[row > 0]
    stats = {"patches": float(touched.size)}
    for threshold in GRAZED:
        stats[f"below_{threshold:.2f}"] = float((touched < threshold).mean())
    for k in TOP_PATCHES:
        kept = np.zeros(row.shape, dtype=bool)
        kept[np.argsort(row)[::-1][: min(k, touched.size)]] = True
        score = rollout.score_kept_patches(kept, coverage, target)
        stats[f"top{k}_recall"] = score.target_recall
        stats[f"top{k}_pixel_recall"] = score.target_pixel_recall
    return stats


def measure(args: Args) -> dict[str, dict[str, float]]:
    """Mean footprint statistics per camera over ``args.scenes`` held-out scenes."""
    env = ShapesEnv(ShapesTask(min_objects=args.objects, max_objects=args.objects, image_size=args.image_size))
    grid = rollout.PatchGrid(args.image_size, args.patch_size, num_slots=2)
    per_slot = grid.patches_per_slot
    samples: dict[str, list[dict[str, float]]] = {"image": [], "wrist_image": []}
    for index in tqdm.trange(args.scenes, desc="scenes"):
        env.reset(rollout.HELD_OUT_SEED_BASE + index)
        target = env.scene.target
        third_person = grid.object_coverage(env.masks())[:, :per_slot]
        env.effector = np.asarray(env.scene.objects[target].center)
        wrist = grid.object_coverage(env.masks())[:, per_slot:]
        samples["image"].append(camera_footprint(third_person, target))
        samples["wrist_image"].append(camera_footprint(wrist, target))
    return {camera: {key: statistics.mean(s[key] for s in rows) for key in rows[0]} for camera, rows in samples.items()}


def report(args: Args, footprint: dict[str, dict[str, float]]) -> str:
    grazed = " | ".join(f"< {t:.0%} of the patch" for t in GRAZED)
    top = " | ".join(f"top {k}: recall / pixel recall" for k in TOP_PATCHES)
    lines = [
        "# The target's footprint on the patch grid (shapes testbed)",
        "",
        "```",
        f"uv run python -m research.lightvla.footprint --objects {args.objects} --scenes {args.scenes} "
        f"--image-size {args.image_size} --patch-size {args.patch_size} --output {args.output}",
        "```",
        "",
        f"{args.scenes} held-out scenes, {args.objects} object(s), {args.image_size} px images in "
        f"{args.patch_size} px patches. Third-person camera at the scene's start; wrist camera with the effector over "
        "the target. 'Grazed': the share of the target's patches in which it covers less than the given share of "
        "the patch's pixels. 'Top k': an oracle keeps the target's k most-covered patches of that camera and nothing "
        "else; its target recall (patches) and pixel recall (the share of the target's pixels in them).",
        "",
        f"| camera | target patches | {grazed} | {top} |",
        "|---|---|" + "---|" * (len(GRAZED) + len(TOP_PATCHES)),
    ]
    for camera, stats in footprint.items():
        grazed_cells = " | ".join(f"{stats[f'below_{t:.2f}']:.2f}" for t in GRAZED)
        top_cells = " | ".join(
            f"{stats[f'top{k}_recall']:.2f} / {stats[f'top{k}_pixel_recall']:.2f}" for k in TOP_PATCHES
        )
        lines.append(f"| {camera} | {stats['patches']:.1f} | {grazed_cells} | {top_cells} |")
    return "\n".join([*lines, ""])


def main(args: Args) -> None:
    text = report(args, measure(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main(tyro.cli(Args))
