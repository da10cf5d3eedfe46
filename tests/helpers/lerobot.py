"""Test helpers that write tiny LeRobot datasets (LIBERO and ALOHA feature names) and a tiny tokenizer to disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from openpi.models import tokenizer as _tokenizer

ALOHA_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
FPS = 10


@dataclasses.dataclass(frozen=True)
class WrittenDataset:
    """A dataset on disk plus the per-frame arrays that were written (frames of all episodes, in order)."""

    root: Path
    repo_id: str
    state: np.ndarray  # [N, state_dim]
    actions: np.ndarray  # [N, action_dim]
    tasks: list[str]  # per frame
    images: dict[str, np.ndarray]  # feature name -> uint8 [N, H, W, 3]


def _image_feature(size: int) -> dict:
    return {"dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channel"]}


def _write(
    root: Path, repo_id: str, features: dict, frames_per_episode: list[list[dict]], robot_type: str
) -> WrittenDataset:
    from datasets.utils import logging as datasets_logging
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets_logging.disable_progress_bar()
    dataset = LeRobotDataset.create(
        repo_id, fps=FPS, features=features, root=root, robot_type=robot_type, use_videos=False
    )
    frames = [frame for episode in frames_per_episode for frame in episode]
    image_keys = [key for key, feature in features.items() if feature["dtype"] == "image"]
    written = WrittenDataset(
        root=root,
        repo_id=repo_id,
        state=np.stack([f[_key(features, "state")] for f in frames]),
        actions=np.stack([f[_key(features, "action")] for f in frames]),
        tasks=[f["task"] for f in frames],
        images={key: np.stack([f[key] for f in frames]) for key in image_keys},
    )
    for episode in frames_per_episode:
        for frame in episode:
            dataset.add_frame(dict(frame))
        dataset.save_episode()
    dataset.finalize()
    return written


def _key(features: dict, prefix: str) -> str:
    return next(key for key in features if key.removeprefix("observation.").startswith(prefix))


def write_libero_dataset(
    root: Path,
    *,
    num_episodes: int = 3,
    episode_length: int = 6,
    image_size: int = 32,
    seed: int = 0,
    repo_id: str = "test/libero",
) -> WrittenDataset:
    """Writes a LeRobot dataset with LIBERO's features: ``image``, ``wrist_image``, ``state`` (8), ``actions`` (7)."""
    rng = np.random.default_rng(seed)
    features = {
        "image": _image_feature(image_size),
        "wrist_image": _image_feature(image_size),
        "state": {"dtype": "float32", "shape": (8,), "names": ["state"]},
        "actions": {"dtype": "float32", "shape": (7,), "names": ["actions"]},
    }
    episodes = [
        [
            {
                "image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
                "wrist_image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
                "state": rng.normal(size=8).astype(np.float32),
                "actions": rng.normal(size=7).astype(np.float32),
                "task": f"put the bowl on plate {episode % 2}",
            }
            for _ in range(episode_length)
        ]
        for episode in range(num_episodes)
    ]
    return _write(root, repo_id, features, episodes, robot_type="panda")


def write_aloha_dataset(
    root: Path,
    *,
    num_episodes: int = 3,
    episode_length: int = 6,
    image_size: int = 32,
    cameras: tuple[str, ...] = ALOHA_CAMERAS,
    seed: int = 0,
    repo_id: str = "test/aloha",
) -> WrittenDataset:
    """Writes an ALOHA-style LeRobot dataset: ``observation.images.<camera>``, ``observation.state`` (14),
    ``action`` (14). Gripper dims (6, 13) lie in [0, 1] like ALOHA's normalised grippers."""
    rng = np.random.default_rng(seed)
    features = {f"observation.images.{camera}": _image_feature(image_size) for camera in cameras}
    features["observation.state"] = {"dtype": "float32", "shape": (14,), "names": ["state"]}
    features["action"] = {"dtype": "float32", "shape": (14,), "names": ["action"]}

    def joints() -> np.ndarray:
        values = rng.uniform(-1, 1, 14).astype(np.float32)
        values[[6, 13]] = rng.uniform(0.05, 0.95, 2)
        return values

    episodes = [
        [
            {
                **{
                    f"observation.images.{camera}": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                    for camera in cameras
                },
                "observation.state": joints(),
                "action": joints(),
                "task": "pick up the cube",
            }
            for _ in range(episode_length)
        ]
        for _ in range(num_episodes)
    ]
    return _write(root, repo_id, features, episodes, robot_type="aloha")


def write_tokenizer(directory: Path) -> Path:
    """Trains a tiny SentencePiece model (PaliGemma special ids) on a few robot prompts."""
    texts = ["put the bowl on the plate", "pick up the cube", "do something", "Task: move, State: 1 2 3;\nAction: "]
    return _tokenizer.train_sentencepiece(texts * 4, directory / "tiny_tokenizer", vocab_size=300)
