"""What a training run reads, resolved once before its first step (both trainers): the validation split (drawn, or
restored from the checkpoint it resumes) and the data config normalised with the training episodes' statistics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from openpi.policies.data_config import DataConfig
from openpi.training import checkpoints, data_loader, norm_stats, validation_split
from openpi.training import config as _config
from openpi.training.validation_split import EpisodeSplit


@dataclasses.dataclass(frozen=True)
class RunData:
    """The run's validation split (None: no validation) and its data config."""

    split: EpisodeSplit | None
    data_config: DataConfig

    def write_files(self, directory: Path) -> None:
        """What a checkpoint keeps of the run's data besides the served norm stats: the validation split
        (``validation_split.json``) and the norm stats of a mixture's other datasets (``assets/<asset_id>/``)."""
        validation_split.save(directory, self.split)
        for member in self.data_config.members[1:]:
            if member.config.norm_stats is not None:
                checkpoints.save_norm_stats(directory, (str(member.config.asset_id), member.config.norm_stats))


def prepare(config: _config.TrainConfig, resume_dir: Path | None) -> RunData:
    """The split a run uses (``resume_dir``: the checkpoint it resumes, whose split it keeps) and the data config
    whose norm stats are those of the training episodes. Without a split the data config is ``config.data``'s."""
    validation_split.check_request(config.val_fraction, config.val_episodes)
    data_config = config.data.create(config.assets_dirs, config.model)
    stored = None if resume_dir is None else validation_split.load(resume_dir)
    if stored is None and config.val_fraction is None and config.val_episodes is None:
        return RunData(None, data_config)
    sources = data_loader.open_sources(config, data_config, skip_norm_stats=True)
    split = validation_split.resolve(
        {source.name: source.episode_ids() for source in sources},
        stored,
        resuming=resume_dir is not None,
        seed=config.seed,
        val_fraction=config.val_fraction,
        val_episodes=config.val_episodes,
    )
    return RunData(split, norm_stats.with_training_episode_stats(config, data_config, split))
