"""``scripts/compute_norm_stats.py``: the normalisation statistics of a config's datasets, written where training
reads them."""

import dataclasses
import logging

logger = logging.getLogger(__name__)


def main(
    config_name: str,
    max_frames: int | None = None,
    val_fraction: float | None = None,
    val_episodes: int | None = None,
    seed: int | None = None,
) -> None:
    """Computes the norm stats of a config's datasets and writes them where training reads them.

    Args:
        config_name: Registered training config whose datasets are read (e.g. pi05_libero_pytorch).
        max_frames: Read at most this many frames of each set, drawn at random; None reads them all.
        val_fraction: The statistics of the training episodes of the split that a run with this --val-fraction
            holds out (where that run reads them).
        val_episodes: As --val-fraction, for a run that holds out this many episodes of every dataset.
        seed: The seed of that run's split; None: the config's.
    """
    from openpi.training import config as _config  # imported once the arguments parse, not by --help
    from openpi.training import norm_stats

    config = _config.get_config(config_name)
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    written = norm_stats.save_norm_stats_sets(config, max_frames, val_fraction=val_fraction, val_episodes=val_episodes)
    for path in written:
        logger.info("Wrote %s", path)
