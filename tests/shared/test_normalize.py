"""Tests for norm stats (de)serialisation, (un)normalisation and the streaming statistics accumulator."""

import json
from pathlib import Path

import numpy as np
import pytest

from openpi.shared import normalize as norm


def _stats() -> norm.NormStats:
    return norm.NormStats(
        mean=[1.0, -2.0, 0.5],
        std=[2.0, 0.5, 1.0],
        q01=[-3.0, -4.0, 0.0],
        q99=[5.0, 0.0, 1.0],
    )


def test_norm_stats_are_float32_and_validated() -> None:
    stats = _stats()
    assert all(a.dtype == np.float32 for a in (stats.mean, stats.std, stats.q01, stats.q99))
    with pytest.raises(ValueError, match="same length"):
        norm.NormStats(mean=[0.0, 1.0], std=[1.0])
    with pytest.raises(ValueError, match="together"):
        norm.NormStats(mean=[0.0], std=[1.0], q01=[0.0])


def test_zscore_values_and_round_trip() -> None:
    x = np.array([[3.0, -1.0, 0.5], [1.0, -2.0, 2.5]], dtype=np.float32)
    y = norm.normalize(x, _stats(), use_quantiles=False)
    np.testing.assert_allclose(y, [[1.0, 2.0, 0.0], [0.0, 0.0, 2.0]], atol=1e-5)
    np.testing.assert_allclose(norm.unnormalize(y, _stats(), use_quantiles=False), x, atol=1e-5)


def test_quantile_maps_range_to_unit_interval_and_round_trips() -> None:
    stats = _stats()
    y = norm.normalize(np.stack([stats.q01, stats.q99, (stats.q01 + stats.q99) / 2]), stats, use_quantiles=True)
    np.testing.assert_allclose(y, [[-1, -1, -1], [1, 1, 1], [0, 0, 0]], atol=1e-5)
    x = np.random.default_rng(0).normal(size=(4, 5, 3))
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(x, stats, True), stats, True), x, atol=1e-9)


def test_longer_input_passes_extra_dims_through() -> None:
    x = np.arange(10, dtype=np.float64).reshape(2, 5)
    for use_quantiles in (False, True):
        y = norm.normalize(x, _stats(), use_quantiles)
        np.testing.assert_array_equal(y[:, 3:], x[:, 3:])
        np.testing.assert_allclose(y[:, :3], norm.normalize(x[:, :3], _stats(), use_quantiles))
        np.testing.assert_allclose(norm.unnormalize(y, _stats(), use_quantiles), x, atol=1e-9)


def test_shorter_input_uses_leading_stats() -> None:
    x = np.array([[3.0, -1.0]])
    np.testing.assert_allclose(norm.normalize(x, _stats(), use_quantiles=False), [[1.0, 2.0]], atol=1e-5)


def test_normalize_does_not_modify_input() -> None:
    x = np.ones((2, 3))
    norm.normalize(x, _stats(), use_quantiles=False)
    np.testing.assert_array_equal(x, np.ones((2, 3)))


def test_quantile_mode_without_quantiles_is_an_error() -> None:
    stats = norm.NormStats(mean=[0.0], std=[1.0])
    with pytest.raises(ValueError, match="q01 and q99"):
        norm.normalize(np.zeros((1, 1)), stats, use_quantiles=True)


def test_json_round_trip_and_format(tmp_path: Path) -> None:
    stats = {"state": _stats(), "actions": norm.NormStats(mean=[0.1, 0.2], std=[1.0, 2.0])}
    path = norm.save(tmp_path / "nested" / "assets", stats)
    assert path == tmp_path / "nested" / "assets" / "norm_stats.json"
    raw = json.loads(path.read_text())
    assert set(raw["norm_stats"]) == {"state", "actions"}
    assert set(raw["norm_stats"]["state"]) == {"mean", "std", "q01", "q99"}
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    loaded = norm.load(path.parent)
    for key, value in stats.items():
        np.testing.assert_array_equal(loaded[key].mean, value.mean)
        np.testing.assert_array_equal(loaded[key].std, value.std)
    np.testing.assert_array_equal(loaded["state"].q99, stats["state"].q99)
    assert loaded["actions"].q01 is None


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"norm_stats\.json"):
        norm.load(tmp_path)


def test_running_stats_match_numpy() -> None:
    rng = np.random.default_rng(1)
    # Batches with different distributions so the histogram range grows several times.
    batches = [rng.normal(0, 1, (500, 4)), rng.normal(10, 3, (700, 4)), rng.uniform(-30, 5, (300, 4))]
    batches += list(rng.exponential(2.0, (6, 200, 4)))
    data = np.concatenate(batches)
    running = norm.RunningStats()
    for batch in batches:
        running.update(batch)
    stats = running.get_statistics()
    np.testing.assert_allclose(stats.mean, data.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.std, data.std(axis=0), rtol=1e-6)
    value_range = np.ptp(data, axis=0)
    for q, estimate in ((0.01, stats.q01), (0.99, stats.q99)):
        relative_error = np.abs(estimate - np.quantile(data, q, axis=0)) / value_range
        assert relative_error.max() < 0.005, (q, relative_error)


def test_running_stats_constant_dimension_and_leading_shape() -> None:
    running = norm.RunningStats()
    running.update(np.stack([np.full(10, 3.0), np.arange(10.0)], axis=-1).reshape(2, 5, 2))
    stats = running.get_statistics()
    np.testing.assert_allclose([stats.mean[0], stats.std[0], stats.q01[0], stats.q99[0]], [3.0, 0.0, 3.0, 3.0])
    np.testing.assert_allclose(stats.mean[1], 4.5)


def test_running_stats_errors() -> None:
    running = norm.RunningStats()
    running.update(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        running.get_statistics()
    with pytest.raises(ValueError, match="dims"):
        running.update(np.zeros((4, 2)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is not valid JSON"),
        ('{"norm_stats": {"state": {"mean": [0.0], "std"', "is not valid JSON"),
        ('{"norm_stats": [1]}', "must hold"),
        ("[1, 2]", "must hold"),
        ('{"norm_stats": {"state": [1]}}', "'state' are invalid: an entry must be a dict"),
        ('{"norm_stats": {"state": {"mean": [0.0]}}}', r"'state' are invalid: .*lacks \['std'\]"),
        ('{"norm_stats": {"actions": {"mean": [0], "std": [1], "q01": [NaN], "q99": [1]}}}', "q01 holds NaN"),
        ('{"norm_stats": {"actions": {"mean": [0], "std": [-1]}}}', "std has negative values"),
        ('{"norm_stats": {"actions": {"mean": [0], "std": [1], "q01": [2], "q99": [1]}}}', "q01 exceeds q99"),
        ('{"norm_stats": {"actions": {"mean": [0, 1], "std": [1]}}}', "same length"),
    ],
)
def test_corrupted_norm_stats_are_refused_naming_the_file(tmp_path, content, message):
    (tmp_path / "norm_stats.json").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        norm.load(tmp_path)
    assert str(tmp_path / "norm_stats.json") in str(error.value)
