"""openpi.training.norm_stats (scripts/compute_norm_stats.py): statistics of a config's dataset after repack + robot
transforms."""

from __future__ import annotations

import dataclasses

import numpy as np

from openpi.shared import normalize
from openpi.training import config as _config
from openpi.training import norm_stats
from tests.helpers.lerobot import write_libero_dataset, write_tokenizer


def test_norm_stats_match_numpy_and_land_where_training_reads_them(tmp_path):
    written = write_libero_dataset(tmp_path / "libero", num_episodes=4, episode_length=10, image_size=16)
    base = _config.get_config("pi05_libero_pytorch")
    config = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, action_horizon=1),  # one action per frame: exact per-frame stats
        data=dataclasses.replace(base.data, repo_id=str(written.root), tokenizer_path=str(write_tokenizer(tmp_path))),
        assets_base_dir=str(tmp_path / "assets"),
        num_workers=0,
    )
    stats, directory = norm_stats.compute_norm_stats(config, batch_size=7)
    assert directory == tmp_path / "assets" / "pi05_libero_pytorch" / "libero"
    for key, values in (("state", written.state), ("actions", written.actions)):
        np.testing.assert_allclose(stats[key].mean, values.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats[key].std, values.std(0), rtol=1e-5, atol=1e-5)
        # 40 frames: the 1% / 99% quantiles lie between the two most extreme values on each side.
        ordered, eps = np.sort(values, axis=0), 1e-3
        assert np.all((stats[key].q01 >= ordered[0] - eps) & (stats[key].q01 <= ordered[1] + eps))
        assert np.all((stats[key].q99 >= ordered[-2] - eps) & (stats[key].q99 <= ordered[-1] + eps))
    normalize.save(directory, stats)
    assert config.data.create(config.assets_dirs, config.model).norm_stats["state"].mean.shape == (8,)


def test_max_frames_limits_the_sample_and_no_tokenizer_is_needed(tmp_path):
    written = write_libero_dataset(tmp_path / "libero", num_episodes=2, episode_length=10, image_size=16)
    base = _config.get_config("pi0_libero_pytorch")
    absent_tokenizer = str(tmp_path / "absent_tokenizer.model")  # norm stats stop before tokenizing
    config = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, repo_id=str(written.root), tokenizer_path=absent_tokenizer),
        model=dataclasses.replace(base.model, action_horizon=1),
        num_workers=0,
    )
    stats, _ = norm_stats.compute_norm_stats(config, max_frames=5)
    full, _ = norm_stats.compute_norm_stats(config)
    assert not np.allclose(stats["state"].mean, full["state"].mean)
