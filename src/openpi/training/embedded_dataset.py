"""A small synthetic LIBERO-style dataset, generated on first use, for CPU quickstarts and tests.

Each episode shows 3-4 coloured shapes on a table; the prompt names one ("move to the red square"). The state is
the end effector's 2-D position (padded to 8 dims), the wrist image a crop around the end effector, and the action
(7 dims) a clipped step toward the named shape plus a gripper command that closes on arrival. The target's position
is only visible in the images, so a policy has to look at the right patches to solve it.

The dataset is written in LeRobot format (features ``image``, ``wrist_image``, ``state``, ``actions``, task text)
under ``$OPENPI_DATA_HOME`` (default ``~/.cache/openpi``), together with ``norm_stats.json``; a tiny SentencePiece
tokenizer trained on its prompts sits next to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from openpi.models import tokenizer as _tokenizer
from openpi.shared import normalize as _normalize

logger = logging.getLogger(__name__)

VERSION = "v1"
REPO_ID = "openpi/embedded_shapes"
DATA_HOME_ENV = "OPENPI_DATA_HOME"
FPS = 10
STATE_DIM = 8
ACTION_DIM = 7
TOKENIZER_VOCAB_SIZE = 512

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
class EmbeddedDatasetSpec:
    """Size of the generated dataset; each distinct spec is cached in its own folder."""

    num_episodes: int = 50
    episode_length: int = 20
    image_size: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_episodes < 1 or self.episode_length < 2 or self.image_size < 16:
            raise ValueError(f"Embedded dataset spec too small: {self}")

    @property
    def folder_name(self) -> str:
        return f"episodes{self.num_episodes}_frames{self.episode_length}_px{self.image_size}_seed{self.seed}"


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


def data_home() -> Path:
    """Root of the versioned embedded-data cache."""
    base = Path(os.environ.get(DATA_HOME_ENV, "~/.cache/openpi")).expanduser()
    return base / "embedded_dataset" / VERSION


def dataset_dir(spec: EmbeddedDatasetSpec) -> Path:
    return data_home() / spec.folder_name


def tokenizer_path() -> Path:
    return data_home() / "tokenizer.model"


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


def generate_episode(rng: np.random.Generator, spec: EmbeddedDatasetSpec) -> Iterator[dict]:
    """Yields the frames of one episode as LeRobot frame dicts (``image``, ``wrist_image``, ``state``, ``actions``,
    ``task``)."""
    scene = sample_scene(rng)
    table = render_table(scene, spec.image_size)
    effector = rng.uniform(0.1, 0.9, size=2)
    for _ in range(spec.episode_length):
        image, wrist = render_frame(table, effector)
        action = expert_action(scene, effector)
        state = np.zeros(STATE_DIM, dtype=np.float32)
        state[:2] = effector
        yield {"image": image, "wrist_image": wrist, "state": state, "actions": action, "task": scene.prompt}
        effector = np.clip(effector + action[:2] * MAX_STEP + rng.normal(0, 0.005, size=2), 0.0, 1.0)


def ensure_tokenizer() -> Path:
    """Trains (once) the tiny SentencePiece tokenizer for the embedded prompts and returns its path."""
    path = tokenizer_path()
    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    prompts = [f"move to the {color} {shape}" for color in COLORS for shape in SHAPES]
    with_state = [
        f"Task: {prompt}, State: {' '.join(str(b) for b in rng.integers(0, 256, STATE_DIM))};\nAction: "
        for prompt in prompts
        for _ in range(8)
    ]
    tmp_prefix = path.parent / f".tokenizer-{uuid.uuid4().hex}"
    trained = _tokenizer.train_sentencepiece([*prompts, *with_state], tmp_prefix, TOKENIZER_VOCAB_SIZE)
    os.replace(trained, path)
    tmp_prefix.with_name(tmp_prefix.name + ".vocab").unlink(missing_ok=True)
    return path


def ensure_dataset(spec: EmbeddedDatasetSpec | None = None) -> Path:
    """Returns the dataset folder for ``spec``, generating it (and the tokenizer) on first use."""
    spec = spec or EmbeddedDatasetSpec()
    ensure_tokenizer()
    root = dataset_dir(spec)
    if (root / "meta" / "info.json").is_file() and (root / _normalize.NORM_STATS_FILENAME).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex}"
    try:
        _write_dataset(spec, tmp)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first
            logger.info("Embedded dataset already present at %s", root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_dataset(spec: EmbeddedDatasetSpec, root: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    image_feature = {
        "dtype": "image",
        "shape": (spec.image_size, spec.image_size, 3),
        "names": ["height", "width", "channel"],
    }
    features = {
        "image": image_feature,
        "wrist_image": image_feature,
        "state": {"dtype": "float32", "shape": (STATE_DIM,), "names": ["state"]},
        "actions": {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["actions"]},
    }
    dataset = LeRobotDataset.create(
        REPO_ID, fps=FPS, features=features, root=root, robot_type="embedded_shapes", use_videos=False
    )
    rng = np.random.default_rng(spec.seed)
    state_stats, action_stats = _normalize.RunningStats(), _normalize.RunningStats()
    with _quiet_datasets_progress():
        for _ in tqdm(range(spec.num_episodes), desc="Generating embedded dataset", unit="episode"):
            frames = list(generate_episode(rng, spec))
            for frame in frames:
                dataset.add_frame(frame)
            dataset.save_episode()
            state_stats.update(np.stack([f["state"] for f in frames]))
            action_stats.update(np.stack([f["actions"] for f in frames]))
        dataset.finalize()
    _normalize.save(root, {"state": state_stats.get_statistics(), "actions": action_stats.get_statistics()})


@contextlib.contextmanager
def _quiet_datasets_progress() -> Iterator[None]:
    """Silences the per-episode progress bars of the ``datasets`` library while writing."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()
