"""The shapes scene: coloured shapes on a table, an end effector that moves over them, and a scripted expert.

The prompt names one object ("move to the red square"); the expert steps toward it and closes the gripper within
reach. The target's position is only visible in the images (the state is the effector's position), so a policy has
to look. Positions are in workspace units ``[0, 1]^2``; ``y`` grows downwards in the image.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

ACTION_DIM = 7
STATE_DIM = 8

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("square", "circle", "triangle")
TABLE_COLOR = (150, 110, 70)
EFFECTOR_COLOR = (20, 20, 20)
MAX_STEP = 0.1  # workspace units per frame at |action| = 1
REACH_RADIUS = 0.05  # the gripper closes within this distance of the target
OBJECT_RADIUS = 0.07
MIN_OBJECT_DISTANCE = 0.25
WRIST_FIELD_OF_VIEW = 0.4


@dataclasses.dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    center: tuple[float, float]  # (x, y) in [0, 1], y grows downwards in the image


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    target: int  # index into objects

    @property
    def prompt(self) -> str:
        target = self.objects[self.target]
        return f"move to the {target.color} {target.shape}"


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draws 3-4 objects of distinct colours at well-separated positions and picks a target."""
    num_objects = int(rng.integers(3, 5))
    colors = rng.choice(list(COLORS), size=num_objects, replace=False)
    centers: list[np.ndarray] = []
    while len(centers) < num_objects:
        candidate = rng.uniform(0.15, 0.85, size=2)
        if all(np.linalg.norm(candidate - c) >= MIN_OBJECT_DISTANCE for c in centers):
            centers.append(candidate)
    objects = tuple(
        SceneObject(str(color), str(rng.choice(SHAPES)), (float(c[0]), float(c[1])))
        for color, c in zip(colors, centers, strict=True)
    )
    return Scene(objects, target=int(rng.integers(num_objects)))


def render_table(scene: Scene, image_size: int) -> np.ndarray:
    """Draws the objects on the table (without the end effector) as uint8 ``[S, S, 3]``."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = TABLE_COLOR
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5
    xs, ys = xs / image_size, ys / image_size
    for obj in scene.objects:
        dx, dy = xs - obj.center[0], ys - obj.center[1]
        if obj.shape == "square":
            mask = (np.abs(dx) <= OBJECT_RADIUS * 0.85) & (np.abs(dy) <= OBJECT_RADIUS * 0.85)
        elif obj.shape == "circle":
            mask = dx**2 + dy**2 <= OBJECT_RADIUS**2
        else:  # triangle pointing up
            mask = (dy <= OBJECT_RADIUS * 0.8) & (dy >= -OBJECT_RADIUS) & (np.abs(dx) <= (dy + OBJECT_RADIUS) * 0.6)
        image[mask] = COLORS[obj.color]
    return image


def render_frame(table: np.ndarray, effector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns the third-person image (table + end-effector ring) and the wrist image (a crop around it)."""
    size = table.shape[0]
    image = table.copy()
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dist = np.hypot(xs / size - effector[0], ys / size - effector[1])
    image[(dist <= 0.035) & (dist >= 0.02)] = EFFECTOR_COLOR
    half = max(2, round(WRIST_FIELD_OF_VIEW * size / 2))
    padded = np.pad(table, ((half, half), (half, half), (0, 0)))
    cx, cy = (int(np.clip(v * size, 0, size - 1)) + half for v in effector)
    crop = padded[cy - half : cy + half, cx - half : cx + half]
    wrist = np.asarray(Image.fromarray(crop).resize((size, size), resample=Image.Resampling.NEAREST))
    return image, wrist


def expert_action(scene: Scene, effector: np.ndarray) -> np.ndarray:
    """The 7-dim action: clipped (dx, dy) step toward the target in [-1, 1], zeros, gripper (+1 closed, -1 open)."""
    target = np.asarray(scene.objects[scene.target].center)
    delta = target - effector
    action = np.zeros(ACTION_DIM, dtype=np.float32)
    action[:2] = np.clip(delta / MAX_STEP, -1.0, 1.0)
    action[-1] = 1.0 if np.linalg.norm(delta) < REACH_RADIUS else -1.0
    return action
