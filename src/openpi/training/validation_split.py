"""The validation split: whole episodes of each dataset held out of training.

The held-out episodes are a seeded draw (``--val-fraction F`` or ``--val-episodes N`` of every dataset, from
``--seed``), written into every checkpoint as ``validation_split.json``: a resumed run restores them instead of
drawing again, so it validates on the same episodes and keeps training on the same ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SPLIT_FILENAME = "validation_split.json"
# Mixed into the seed so that the split's draw is independent of every other seeded stream.
_SPLIT_STREAM = 0x5917


@dataclasses.dataclass(frozen=True)
class EpisodeSplit:
    """The held-out episodes of each dataset (by name) and how they were requested."""

    seed: int
    val_fraction: float | None
    val_episodes: int | None
    held_out: Mapping[str, tuple[int, ...]]  # dataset name -> held-out episode ids, ascending

    @property
    def request(self) -> str:
        """How the split was asked for, as the command line spells it."""
        return describe_request(self.val_fraction, self.val_episodes)

    def frames(self, name: str, episode_ids: np.ndarray, *, held_out: bool) -> np.ndarray:
        """Indices of the frames of dataset ``name`` (``episode_ids [F]``: each frame's episode) in the held-out
        episodes (``held_out``) or in the training ones."""
        mask = np.isin(episode_ids, np.asarray(self.held_out[name], dtype=np.int64))
        return np.flatnonzero(mask if held_out else ~mask)

    def key(self, names: list[str]) -> str:
        """A short digest of the held-out episodes of ``names``: the cache key of their training episodes' stats."""
        text = json.dumps({name: list(self.held_out[name]) for name in sorted(names)})
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "val_episodes": self.val_episodes,
            "held_out": {name: list(ids) for name, ids in self.held_out.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpisodeSplit:
        held_out = {name: tuple(int(i) for i in ids) for name, ids in data["held_out"].items()}
        return cls(data["seed"], data["val_fraction"], data["val_episodes"], held_out)


def describe_request(val_fraction: float | None, val_episodes: int | None) -> str:
    if val_fraction is not None:
        return f"--val-fraction {val_fraction}"
    return "no validation split" if val_episodes is None else f"--val-episodes {val_episodes}"


def check_request(val_fraction: float | None, val_episodes: int | None) -> None:
    """Refuses both flags at once, a fraction outside (0, 1) and an episode count below 1."""
    if val_fraction is not None and val_episodes is not None:
        raise ValueError("Pass --val-fraction or --val-episodes, not both")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if val_episodes is not None and val_episodes < 1:
        raise ValueError(f"--val-episodes must be >= 1, got {val_episodes}")


def num_held_out(name: str, num_episodes: int, val_fraction: float | None, val_episodes: int | None) -> int:
    """How many of dataset ``name``'s episodes the request holds out; an error when that leaves no validation or no
    training episode."""
    count = val_episodes if val_fraction is None else math.floor(val_fraction * num_episodes + 0.5)
    request = describe_request(val_fraction, val_episodes)
    if count is None or count < 1:
        raise ValueError(
            f"{request} holds out no episode of dataset {name!r} ({num_episodes} episodes); raise it or pass "
            "--val-episodes N"
        )
    if count >= num_episodes:
        raise ValueError(f"{request} leaves no training episode of dataset {name!r} ({num_episodes} episodes)")
    return count


def draw(
    episode_ids: Mapping[str, np.ndarray], *, seed: int, val_fraction: float | None, val_episodes: int | None
) -> EpisodeSplit:
    """Holds out the requested episodes of each dataset (``episode_ids``: name -> each frame's episode id), drawn
    from ``seed`` and the dataset's name."""
    check_request(val_fraction, val_episodes)
    held_out = {}
    for name, ids in episode_ids.items():
        episodes = np.unique(ids)
        count = num_held_out(name, len(episodes), val_fraction, val_episodes)
        rng = np.random.default_rng([seed, _SPLIT_STREAM, *name.encode()])
        held_out[name] = tuple(sorted(int(e) for e in rng.choice(episodes, count, replace=False)))
    return EpisodeSplit(seed, val_fraction, val_episodes, held_out)


def resolve(
    episode_ids: Mapping[str, np.ndarray],
    stored: EpisodeSplit | None,
    *,
    resuming: bool,
    seed: int,
    val_fraction: float | None,
    val_episodes: int | None,
) -> EpisodeSplit:
    """The split of a run that has one: the checkpoint's it resumes (``stored``), which it keeps whatever this run
    asks for (and says so when that differs), else a new draw of the requested episodes."""
    check_request(val_fraction, val_episodes)
    request = describe_request(val_fraction, val_episodes)
    if stored is None:
        if resuming:
            logger.warning(
                "The checkpoint trained on every episode: the validation episodes drawn now (%s) were seen", request
            )
        return draw(episode_ids, seed=seed, val_fraction=val_fraction, val_episodes=val_episodes)
    if (stored.val_fraction, stored.val_episodes) != (val_fraction, val_episodes):
        logger.warning(
            "The checkpoint holds out %d episodes (%s); this run asks for %s: keeping the checkpoint's split, so that "
            "the run trains and validates on the same episodes as before",
            sum(len(ids) for ids in stored.held_out.values()),
            stored.request,
            request,
        )
    if missing := sorted(set(episode_ids) - set(stored.held_out)):
        raise ValueError(f"The checkpoint's validation split has no episodes of dataset(s) {missing}")
    return stored


def save(directory: Path, split: EpisodeSplit | None) -> None:
    """Writes ``directory/validation_split.json`` (nothing for None)."""
    if split is not None:
        (Path(directory) / SPLIT_FILENAME).write_text(json.dumps(split.to_json(), indent=1))


def load(directory: Path) -> EpisodeSplit | None:
    """The split a checkpoint folder holds, or None."""
    path = Path(directory) / SPLIT_FILENAME
    return EpisodeSplit.from_json(json.loads(path.read_text())) if path.is_file() else None
