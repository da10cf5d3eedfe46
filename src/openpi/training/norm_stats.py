"""Normalisation statistics of a config's datasets (``scripts/compute_norm_stats.py``).

Samples go through the config's pipeline up to the robot mapping (``build_pipeline(stage="robot")``); mean, std,
q01 and q99 of ``state`` and ``actions`` are written to ``assets/<config>/<asset_id>/norm_stats.json`` (or the folder
an ``AssetsConfig`` points at), where training reads them. A mixture has one set per dataset, or one shared set over
every dataset's frames. With a validation split the statistics are those of the training episodes only, in
``<asset_id>/train_episodes_<key>/`` (``key``: a digest of the held-out episodes); the trainers compute them on first
use.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from openpi.policies.data_config import DataConfig, load_norm_stats_if_present
from openpi.policies.pipeline import build_pipeline
from openpi.shared import normalize
from openpi.training import config as _config
from openpi.training import data_loader, validation_split
from openpi.training.validation_split import EpisodeSplit
from openpi.transforms import stack_samples

logger = logging.getLogger(__name__)

STATS_KEYS = ("state", "actions")
Stats = dict[str, normalize.NormStats]


def _keep_stats_keys(sample: dict) -> dict:
    return {key: np.asarray(sample[key], dtype=np.float32) for key in STATS_KEYS}


@dataclasses.dataclass(frozen=True)
class _StatsGroup:
    """Datasets normalised with one set of statistics (a mixture's shared set groups all of them) and its folder."""

    sources: list[data_loader.Source]
    directory: Path


def _groups(
    config: _config.TrainConfig, sources: list[data_loader.Source], split: EpisodeSplit | None
) -> list[_StatsGroup]:
    """The sets of statistics ``sources`` read, each with the folder it belongs in (a split's training episodes':
    ``assets/<config>/<asset_id>/train_episodes_<key>``)."""
    by_folder: dict[tuple[str | None, str | None], list[data_loader.Source]] = {}
    for source in sources:
        by_folder.setdefault((source.data_config.asset_id, source.data_config.norm_stats_dir), []).append(source)
    groups = []
    for (asset_id, norm_stats_dir), members in by_folder.items():
        if norm_stats_dir is None:
            raise ValueError(f"Config {config.name!r} has no norm stats folder (no repo_id / asset_id)")
        directory = Path(norm_stats_dir)
        if split is not None:
            key = split.key([s.name for s in members])
            directory = Path(config.assets_dirs) / str(asset_id) / f"train_episodes_{key}"
        groups.append(_StatsGroup(members, directory))
    return groups


def _statistics(
    config: _config.TrainConfig,
    sources: Sequence[data_loader.Source],
    split: EpisodeSplit | None,
    max_frames: int | None,
    batch_size: int,
) -> Stats:
    """The statistics of the (training) frames of ``sources``, in the robot's units."""
    datasets = []
    for source in sources:
        samples = source.samples
        if split is not None:
            frames = split.frames(source.name, source.episode_ids(), held_out=False)
            samples = torch.utils.data.Subset(samples, frames.tolist())
        robot_steps = build_pipeline(source.data_config, None, from_dataset=True, stage="robot").inputs
        datasets.append(data_loader.TransformedDataset(samples, [*robot_steps, _keep_stats_keys]))
    dataset = torch.utils.data.ConcatDataset(datasets)
    num_frames = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    # A random subset when limited, so the frames are not all from the first episodes.
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:num_frames].tolist()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=config.num_workers,
        collate_fn=stack_samples,
    )
    stats = {key: normalize.RunningStats() for key in STATS_KEYS}
    for batch in tqdm(loader, desc="Computing norm stats", unit="batch"):
        for key in STATS_KEYS:
            stats[key].update(batch[key])
    return {key: value.get_statistics() for key, value in stats.items()}


def compute_norm_stats_sets(
    config: _config.TrainConfig,
    max_frames: int | None = None,
    batch_size: int = 32,
    split: EpisodeSplit | None = None,
) -> list[tuple[Stats, Path]]:
    """Every set of statistics ``config`` reads (one, or one per dataset of a mixture without shared stats), each
    with the folder it belongs in; with ``split``, of its training episodes."""
    config.data.prepare()
    data_config = config.data.create(config.assets_dirs, config.model)
    sources = data_loader.open_sources(config, data_config, skip_norm_stats=True)
    return [
        (_statistics(config, group.sources, split, max_frames, batch_size), group.directory)
        for group in _groups(config, sources, split)
    ]


def compute_norm_stats(
    config: _config.TrainConfig, max_frames: int | None = None, batch_size: int = 32
) -> tuple[Stats, Path]:
    """Returns the statistics of ``config``'s dataset and the folder they belong in (a config with one set)."""
    sets = compute_norm_stats_sets(config, max_frames, batch_size)
    if len(sets) != 1:
        raise ValueError(f"Config {config.name!r} reads {len(sets)} sets of norm stats; use compute_norm_stats_sets")
    return sets[0]


def with_training_episode_stats(
    config: _config.TrainConfig, data_config: DataConfig, split: EpisodeSplit
) -> DataConfig:
    """``data_config`` normalised with the statistics of the split's training episodes: read from their folder, or
    computed and written there on first use. A data config that defines its own stats (fake data) keeps them."""
    members = data_loader.members_of(data_config)
    if all(m.config.norm_stats_dir is None for m in members):
        return data_config
    sources = data_loader.open_sources(config, data_config, skip_norm_stats=True)
    resolved: dict[str, DataConfig] = {}
    for group in _groups(config, sources, split):
        stats = load_norm_stats_if_present(group.directory)
        if stats is None:
            logger.info(
                "Computing the norm stats of the training episodes (first use of this split): %s", group.directory
            )
            stats = _statistics(config, group.sources, split, None, 32)
            normalize.save(group.directory, stats)
        for source in group.sources:
            resolved[source.name] = dataclasses.replace(
                source.data_config, norm_stats=stats, norm_stats_dir=str(group.directory)
            )
    if not data_config.members:
        return next(iter(resolved.values()))
    new_members = tuple(dataclasses.replace(m, config=resolved[m.name]) for m in data_config.members)
    return dataclasses.replace(new_members[0].config, members=new_members)


def save_norm_stats_sets(
    config: _config.TrainConfig,
    max_frames: int | None = None,
    *,
    val_fraction: float | None = None,
    val_episodes: int | None = None,
) -> list[Path]:
    """Writes every set of statistics ``config`` reads (of the training episodes of the split that a run of
    ``config`` with ``val_fraction`` / ``val_episodes`` draws, if given); returns the files written."""
    split = None
    if val_fraction is not None or val_episodes is not None:
        config.data.prepare()
        data_config = config.data.create(config.assets_dirs, config.model)
        sources = data_loader.open_sources(config, data_config, skip_norm_stats=True)
        split = validation_split.draw(
            {s.name: s.episode_ids() for s in sources},
            seed=config.seed,
            val_fraction=val_fraction,
            val_episodes=val_episodes,
        )
    return [
        normalize.save(directory, stats)
        for stats, directory in compute_norm_stats_sets(config, max_frames, split=split)
    ]
