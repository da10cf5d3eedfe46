"""The shapes scene: coloured shapes on a table, an end effector that moves over them, and a scripted expert.

The prompt names one object ("move to the red square"); the expert steps toward it and closes the gripper within
reach. Its action is either the step to take (``delta``, saturated at ``MAX_STEP`` per axis: far from the target only
the direction matters) or the point to move to (``position``: the target's exact position at every step). Closing
the gripper over an object grasps it (the named target: success; another object: failure); closing it over the bare
table grasps nothing and the episode goes on. The target's position is only visible in the images
(the state is the effector's position), so a policy has to look. Positions are in workspace units ``[0, 1]^2``;
``y`` grows downwards in the image.

:class:`ShapesEnv` is the interactive version (``reset(seed)``, ``step(action)``, LIBERO-format observations,
per-object pixel masks for measuring what a pruner keeps); the embedded dataset (:mod:`shapes_dataset`) is its
expert's recorded episodes.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import numpy as np
from PIL import Image

ACTION_DIM = 7
STATE_DIM = 8

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("square", "circle", "triangle")
TABLE_COLOR = (150, 110, 70)
EFFECTOR_COLOR = (20, 20, 20)
MAX_STEP = 0.1  # workspace units per frame at |action| = 1
REACH_RADIUS = 0.05  # the expert closes the gripper within this distance of the target's centre
OBJECT_RADIUS = 0.07
GRASP_RADIUS = OBJECT_RADIUS  # a closing gripper grasps the object whose centre is this close
MIN_OBJECT_DISTANCE = 0.25
WRIST_FIELD_OF_VIEW = 0.4
MOTION_NOISE = 0.005  # std of the effector's random drift per step
CAMERAS = ("image", "wrist_image")  # the LIBERO feature names of the third-person and the wrist camera
ActionSpace = Literal["delta", "position"]  # what action[:2] means: the step to take, or the point to move to
ACTION_SPACES: tuple[str, ...] = typing.get_args(ActionSpace)


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


@dataclasses.dataclass(frozen=True)
class ShapesTask:
    """Difficulty knobs of the scene.

    ``shared_attributes``: a distractor shares the target's colour and another its shape (when there are enough
    objects), so that only the whole prompt identifies the target. Otherwise colours are distinct.

    ``action_space``: ``delta``, ``action[:2]`` is the step, ``clip(action, -1, 1) * MAX_STEP`` per axis (the expert's
    is saturated on some axis whenever the target is over ``MAX_STEP`` away on it, so there only the direction to the
    target matters); ``position``, ``action[:2]`` is the point to move to in workspace units, approached by at most
    ``MAX_STEP`` per axis and step (the expert's is the target's centre, so every action needs its exact position).
    The effector moves the same way in both.
    """

    min_objects: int = 3
    max_objects: int = 4
    shared_attributes: bool = False
    image_size: int = 96
    max_steps: int = 30
    action_space: ActionSpace = "delta"

    def __post_init__(self) -> None:
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"action_space must be one of {ACTION_SPACES}, got {self.action_space!r}")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(f"Need 1 <= min_objects <= max_objects <= 6, got {self.min_objects}, {self.max_objects}")
        if not self.shared_attributes and self.max_objects > len(COLORS):
            raise ValueError(f"At most {len(COLORS)} objects have distinct colours")


def sample_scene(rng: np.random.Generator, task: ShapesTask = ShapesTask()) -> Scene:
    """Draws objects at well-separated positions and picks a target (colours distinct unless shared_attributes)."""
    num_objects = int(rng.integers(task.min_objects, task.max_objects + 1))
    if task.shared_attributes:
        return _scene_with_shared_attributes(rng, num_objects)
    colors = rng.choice(list(COLORS), size=num_objects, replace=False)
    centers = _separated_centers(rng, num_objects)
    objects = tuple(
        SceneObject(str(color), str(rng.choice(SHAPES)), (float(c[0]), float(c[1])))
        for color, c in zip(colors, centers, strict=True)
    )
    return Scene(objects, target=int(rng.integers(num_objects)))


def _scene_with_shared_attributes(rng: np.random.Generator, num_objects: int) -> Scene:
    """Object 0 is the target; object 1 shares its colour, object 2 its shape; the rest are random; no duplicates."""
    kinds: list[tuple[str, str]] = [(str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)))]
    color, shape = kinds[0]
    if num_objects > 1:
        kinds.append((color, str(rng.choice([s for s in SHAPES if s != shape]))))
    if num_objects > 2:
        kinds.append((str(rng.choice([c for c in COLORS if c != color])), shape))
    while len(kinds) < num_objects:
        candidate = (str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)))
        if candidate not in kinds:
            kinds.append(candidate)
    order = rng.permutation(num_objects)
    centers = _separated_centers(rng, num_objects)
    objects = tuple(SceneObject(*kinds[i], (float(c[0]), float(c[1]))) for i, c in zip(order, centers, strict=True))
    return Scene(objects, target=int(np.flatnonzero(order == 0)[0]))


def _separated_centers(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    centers: list[np.ndarray] = []
    while len(centers) < count:
        candidate = rng.uniform(0.15, 0.85, size=2)
        if all(np.linalg.norm(candidate - c) >= MIN_OBJECT_DISTANCE for c in centers):
            centers.append(candidate)
    return centers


def object_masks(scene: Scene, image_size: int) -> np.ndarray:
    """Bool ``[num_objects, S, S]``: the pixels each object covers in the third-person view."""
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5
    xs, ys = xs / image_size, ys / image_size
    masks = []
    for obj in scene.objects:
        dx, dy = xs - obj.center[0], ys - obj.center[1]
        if obj.shape == "square":
            mask = (np.abs(dx) <= OBJECT_RADIUS * 0.85) & (np.abs(dy) <= OBJECT_RADIUS * 0.85)
        elif obj.shape == "circle":
            mask = dx**2 + dy**2 <= OBJECT_RADIUS**2
        else:  # triangle pointing up
            mask = (dy <= OBJECT_RADIUS * 0.8) & (dy >= -OBJECT_RADIUS) & (np.abs(dx) <= (dy + OBJECT_RADIUS) * 0.6)
        masks.append(mask)
    return np.stack(masks)


def render_table(scene: Scene, image_size: int) -> np.ndarray:
    """Draws the objects on the table (without the end effector) as uint8 ``[S, S, 3]``."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = TABLE_COLOR
    for obj, mask in zip(scene.objects, object_masks(scene, image_size), strict=True):
        image[mask] = COLORS[obj.color]
    return image


def wrist_view(table: np.ndarray, effector: np.ndarray) -> np.ndarray:
    """The wrist camera's view of ``table`` (``[S, S, ...]`` image or mask): a crop around the effector, resized
    back to ``S x S`` (nearest)."""
    size = table.shape[0]
    half = max(2, round(WRIST_FIELD_OF_VIEW * size / 2))
    padding = ((half, half), (half, half)) + ((0, 0),) * (table.ndim - 2)
    padded = np.pad(table, padding)
    cx, cy = (int(np.clip(v * size, 0, size - 1)) + half for v in effector)
    crop = padded[cy - half : cy + half, cx - half : cx + half]
    if crop.dtype == bool:
        resized = Image.fromarray(crop.astype(np.uint8) * 255).resize((size, size), resample=Image.Resampling.NEAREST)
        return np.asarray(resized) > 0
    return np.asarray(Image.fromarray(crop).resize((size, size), resample=Image.Resampling.NEAREST))


def render_frame(table: np.ndarray, effector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns the third-person image (table + end-effector ring) and the wrist image (a crop around it)."""
    size = table.shape[0]
    image = table.copy()
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dist = np.hypot(xs / size - effector[0], ys / size - effector[1])
    image[(dist <= 0.035) & (dist >= 0.02)] = EFFECTOR_COLOR
    return image, wrist_view(table, effector)


def expert_action(scene: Scene, effector: np.ndarray, action_space: ActionSpace = "delta") -> np.ndarray:
    """The 7-dim action: (x, y) motion, zeros, gripper (+1 closed, -1 open). The motion is the clipped step toward the
    target in [-1, 1] (``delta``) or the target's centre (``position``); see :class:`ShapesTask`."""
    if action_space not in ACTION_SPACES:
        raise ValueError(f"action_space must be one of {ACTION_SPACES}, got {action_space!r}")
    target = np.asarray(scene.objects[scene.target].center)
    delta = target - effector
    action = np.zeros(ACTION_DIM, dtype=np.float32)
    action[:2] = target if action_space == "position" else np.clip(delta / MAX_STEP, -1.0, 1.0)
    action[-1] = 1.0 if np.linalg.norm(delta) < REACH_RADIUS else -1.0
    return action


@dataclasses.dataclass(frozen=True)
class StepResult:
    observation: dict
    done: bool
    success: bool


class ShapesEnv:
    """The shapes scene as an environment with LIBERO-format observations.

    ``step(action)`` moves the effector by ``clip(action[:2], -1, 1) * MAX_STEP`` (``delta`` actions) or toward the
    point ``action[:2]`` by at most ``MAX_STEP`` per axis (``position`` actions), plus a small random drift. Closing
    the gripper (``action[-1] > 0``) within ``GRASP_RADIUS`` of an object's centre grasps it and ends the episode: a
    success for the named target, a failure for any other object. Closing it over the bare table grasps nothing (the
    effector moves as usual). After ``task.max_steps`` steps the episode ends as a failure.
    """

    def __init__(self, task: ShapesTask = ShapesTask()) -> None:
        self.task = task
        self._rng = np.random.default_rng()
        self.scene: Scene | None = None
        self.effector = np.zeros(2)
        self.steps = 0
        self._table = np.zeros((task.image_size, task.image_size, 3), dtype=np.uint8)

    def reset(self, seed: int | np.random.Generator) -> dict:
        """Starts an episode from ``seed`` (or a generator, to continue one stream) and returns its observation."""
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.set_scene(sample_scene(self._rng, self.task))
        self.effector = self._rng.uniform(0.1, 0.9, size=2)
        self.steps = 0
        return self.observation()

    def set_scene(self, scene: Scene) -> None:
        """Replaces the scene (e.g. the same objects with another target, for a prompt swap)."""
        self.scene = scene
        self._table = render_table(scene, self.task.image_size)

    def observation(self) -> dict:
        """``observation/image``, ``observation/wrist_image`` (uint8 ``[S, S, 3]``), ``observation/state`` (8) and
        ``prompt``."""
        image, wrist = render_frame(self._table, self.effector)
        state = np.zeros(STATE_DIM, dtype=np.float32)
        state[:2] = self.effector
        return {
            "observation/image": image,
            "observation/wrist_image": wrist,
            "observation/state": state,
            "prompt": self._scene().prompt,
        }

    def expert_action(self) -> np.ndarray:
        return expert_action(self._scene(), self.effector, self.task.action_space)

    def move(self, action: np.ndarray) -> None:
        """Applies the motion of ``action`` (no success check): the dataset recorder's step."""
        motion = np.asarray(action)[:2]
        if self.task.action_space == "position":
            step = np.clip(motion - self.effector, -MAX_STEP, MAX_STEP)
        else:
            step = np.clip(motion, -1.0, 1.0) * MAX_STEP
        self.effector = np.clip(self.effector + step + self._rng.normal(0, MOTION_NOISE, size=2), 0.0, 1.0)

    def step(self, action: np.ndarray) -> StepResult:
        """Grasps (ending the episode) or moves; returns the next observation."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,) or not np.isfinite(action).all():
            raise ValueError(f"action must be {ACTION_DIM} finite numbers, got shape {action.shape}")
        self.steps += 1
        grasped = self.object_under_gripper() if action[-1] > 0 else None
        if grasped is not None:
            return StepResult(self.observation(), done=True, success=grasped == self._scene().target)
        self.move(action)
        return StepResult(self.observation(), done=self.steps >= self.task.max_steps, success=False)

    def object_under_gripper(self) -> int | None:
        """The index of the object a closing gripper would grasp, or None over the bare table."""
        for index, obj in enumerate(self._scene().objects):
            if np.linalg.norm(np.asarray(obj.center) - self.effector) < GRASP_RADIUS:
                return index
        return None

    def masks(self) -> dict[str, np.ndarray]:
        """Per camera, bool ``[num_objects, S, S]`` pixel masks of the objects in the current view."""
        table = object_masks(self._scene(), self.task.image_size)
        wrist = np.stack([wrist_view(mask, self.effector) for mask in table])
        return {"image": table, "wrist_image": wrist}

    def _scene(self) -> Scene:
        if self.scene is None:
            raise RuntimeError("Call reset(seed) before using the environment")
        return self.scene
