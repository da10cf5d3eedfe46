"""Normalisation statistics of a config's dataset (``scripts/compute_norm_stats.py``).

Samples go through the config's pipeline up to the robot mapping (``build_pipeline(stage="robot")``); mean, std,
q01 and q99 of ``state`` and ``actions`` are written to ``assets/<config>/<asset_id>/norm_stats.json`` (or the folder
an ``AssetsConfig`` points at), where training reads them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from openpi.policies.pipeline import build_pipeline
from openpi.shared import normalize
from openpi.training import config as _config
from openpi.transforms import stack_samples

logger = logging.getLogger(__name__)

STATS_KEYS = ("state", "actions")


def _keep_stats_keys(sample: dict) -> dict:
    return {key: np.asarray(sample[key], dtype=np.float32) for key in STATS_KEYS}


def compute_norm_stats(
    config: _config.TrainConfig, max_frames: int | None = None, batch_size: int = 32
) -> tuple[dict[str, normalize.NormStats], Path]:
    """Returns the statistics of ``config``'s dataset and the folder they belong in."""
    import torch  # with the data loader: imported by the command that computes, not by its --help

    from openpi.training import data_loader

    config.data.prepare()
    data_config = config.data.create(config.assets_dirs, config.model)
    if data_config.norm_stats_dir is None:
        raise ValueError(f"Config {config.name!r} has no norm stats folder (no repo_id / asset_id)")
    dataset = data_loader.create_torch_dataset(data_config, config.model.action_horizon, config.model)
    robot_steps = build_pipeline(data_config, None, from_dataset=True, stage="robot").inputs
    transforms = [*robot_steps, _keep_stats_keys]
    dataset = data_loader.TransformedDataset(dataset, transforms)
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
    return {key: value.get_statistics() for key, value in stats.items()}, Path(data_config.norm_stats_dir)


def compute_and_save(config_name: str, max_frames: int | None = None) -> None:
    """Computes the norm stats of a config's dataset and writes them where training reads them.

    Args:
        config_name: Registered training config whose dataset is read (e.g. pi05_libero_pytorch).
        max_frames: Read at most this many frames, drawn at random; None reads them all.
    """
    config = _config.get_config(config_name)
    stats, directory = compute_norm_stats(config, max_frames)
    path = normalize.save(directory, stats)
    logger.info("Wrote %s", path)
