"""The embedded dataset: recorded expert episodes of the shapes scene (:mod:`openpi.envs.shapes`), generated on
first use, for CPU quickstarts and tests.

The state is the end effector's 2-D position (padded to 8 dims), the wrist image a crop around the end effector, and
the action (7 dims) the expert's clipped step toward the named shape (or, with ``action_space="position"``, the
shape's position) plus a gripper command that closes on arrival.

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
from tqdm import tqdm

from openpi.envs.shapes import ACTION_DIM, COLORS, SHAPES, STATE_DIM, ActionSpace, ShapesEnv, ShapesTask
from openpi.models import tokenizer as _tokenizer
from openpi.shared import checkpoint_files
from openpi.shared import normalize as _normalize

logger = logging.getLogger(__name__)

VERSION = "v1"
REPO_ID = "openpi/embedded_shapes"
DATA_HOME_ENV = "OPENPI_DATA_HOME"
FPS = 10
TOKENIZER_VOCAB_SIZE = 512


@dataclasses.dataclass(frozen=True)
class EmbeddedDatasetSpec:
    """Size and difficulty of the generated dataset; each distinct spec is cached in its own folder."""

    num_episodes: int = 50
    episode_length: int = 20
    image_size: int = 96
    seed: int = 0
    min_objects: int = 3
    max_objects: int = 4
    shared_attributes: bool = False
    # End each episode this many frames after the expert first closes the gripper (at most episode_length frames);
    # None records episode_length frames, most of them holding the gripper closed for short approaches.
    frames_after_arrival: int | None = None
    action_space: ActionSpace = "delta"  # action[:2]: the step to take (delta) or the point to move to (position)

    def __post_init__(self) -> None:
        if self.num_episodes < 1 or self.episode_length < 2 or self.image_size < 16:
            raise ValueError(f"Embedded dataset spec too small: {self}")
        self.task  # noqa: B018  (validates the difficulty knobs)

    @property
    def task(self) -> ShapesTask:
        return ShapesTask(
            self.min_objects,
            self.max_objects,
            self.shared_attributes,
            self.image_size,
            action_space=self.action_space,
        )

    @property
    def folder_name(self) -> str:
        name = f"episodes{self.num_episodes}_frames{self.episode_length}_px{self.image_size}_seed{self.seed}"
        if (self.min_objects, self.max_objects) != (3, 4):
            name += f"_objects{self.min_objects}-{self.max_objects}"
        name += "_shared" if self.shared_attributes else ""
        name += "" if self.frames_after_arrival is None else f"_after{self.frames_after_arrival}"
        return name + ("" if self.action_space == "delta" else f"_{self.action_space}")


def data_home() -> Path:
    """Root of the versioned embedded-data cache."""
    base = Path(os.environ.get(DATA_HOME_ENV, "~/.cache/openpi")).expanduser()
    return base / "embedded_dataset" / VERSION


def dataset_dir(spec: EmbeddedDatasetSpec) -> Path:
    return data_home() / spec.folder_name


def tokenizer_path() -> Path:
    return data_home() / "tokenizer.model"


def generate_episode(rng: np.random.Generator, spec: EmbeddedDatasetSpec) -> Iterator[dict]:
    """Yields the frames of one recorded expert episode of :class:`ShapesEnv` as LeRobot frame dicts (``image``,
    ``wrist_image``, ``state``, ``actions``, ``task``): ``episode_length`` frames, the expert holding the gripper
    closed once it has arrived, or fewer with ``frames_after_arrival``."""
    env = ShapesEnv(spec.task)
    observation = env.reset(rng)
    closed_frames = 0
    for _ in range(spec.episode_length):
        action = env.expert_action()
        closed_frames += int(action[-1] > 0)
        if spec.frames_after_arrival is not None and closed_frames > spec.frames_after_arrival + 1:
            return
        yield {
            "image": observation["observation/image"],
            "wrist_image": observation["observation/wrist_image"],
            "state": observation["observation/state"],
            "actions": action,
            "task": observation["prompt"],
        }
        env.move(action)
        observation = env.observation()


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
    if (root / "meta" / "info.json").is_file() and checkpoint_files.norm_stats_path(root).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_tmp_dirs(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        _write_dataset(spec, tmp)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first
            logger.info("Embedded dataset already present at %s", root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _remove_abandoned_tmp_dirs(root: Path) -> None:
    """Deletes half-written copies of ``root`` whose generating process is gone (a killed first use)."""
    for tmp in root.parent.glob(f".{root.name}.tmp-*"):
        pid = tmp.name.removeprefix(f".{root.name}.tmp-").split("-", 1)[0]
        if not pid.isdigit() or not _process_alive(int(pid)):
            logger.info("Removing abandoned partial dataset %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


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
