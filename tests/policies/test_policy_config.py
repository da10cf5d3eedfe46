"""create_trained_policy serves only what it can verify: files against the checkpoint's manifest, weights that are
whole and finite, norm stats that fit the robot and the model's normalisation."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from openpi.models import tokenizer
from openpi.policies import policy_config
from openpi.shared import checkpoint_integrity, normalize
from tests.helpers.policies import ASSET_ID, PROMPTS, SAMPLE_KWARGS, libero_observation, make_train_config
from tests.helpers.policies import write_checkpoint as write_tiny_checkpoint


@pytest.fixture(scope="module")
def train_config(tmp_path_factory):
    tokenizer_path = tokenizer.train_sentencepiece(PROMPTS, tmp_path_factory.mktemp("tok") / "tok", vocab_size=300)
    return make_train_config(tokenizer_path)


@pytest.fixture(scope="module")
def intact(tmp_path_factory, train_config) -> Path:
    """A tiny checkpoint with its manifest, as training and the converter write it."""
    checkpoint = write_tiny_checkpoint(tmp_path_factory.mktemp("intact"), train_config)
    checkpoint_integrity.write_manifest(checkpoint)
    return checkpoint


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "checkpoint"))


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    content = bytearray(path.read_bytes())
    content[offset : offset + len(data)] = data
    path.write_bytes(bytes(content))


def _create(train_config, checkpoint: Path, **kwargs):
    return policy_config.create_trained_policy(
        train_config, checkpoint, sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu", **kwargs
    )


@pytest.mark.parametrize(
    "damage",
    [bytes(64 * 1024), np.random.default_rng(0).bytes(4096), b"\xff" * 16],
    ids=["64 KB zeroed", "4 KB random", "16 bytes 0xFF"],
)
def test_weights_that_differ_from_the_manifest_are_refused_naming_the_file(tmp_path, train_config, intact, damage):
    checkpoint = _copy(intact, tmp_path)
    weights_file = checkpoint / "model.safetensors"
    _overwrite(weights_file, weights_file.stat().st_size // 2, damage)
    named = re.escape(f"{weights_file} does not match its checksum")
    with pytest.raises(policy_config.UnverifiedCheckpointError, match=named):
        _create(train_config, checkpoint)
    assert _create(train_config, checkpoint, verify=False).infer(libero_observation(0))["actions"].shape[0] > 0


def test_edited_norm_stats_are_refused_naming_the_file(tmp_path, train_config, intact):
    checkpoint = _copy(intact, tmp_path)
    stats_file = checkpoint / "assets" / ASSET_ID / "norm_stats.json"
    stats_file.write_text(stats_file.read_text().replace("-1.0", "-1.5", 1))
    with pytest.raises(policy_config.UnverifiedCheckpointError, match=re.escape(f"{stats_file} does not match")):
        _create(train_config, checkpoint)


def test_a_checkpoint_without_a_manifest_is_served_with_a_warning_naming_it(tmp_path, train_config, intact, caplog):
    checkpoint = _copy(intact, tmp_path)
    (checkpoint / checkpoint_integrity.MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        policy = _create(train_config, checkpoint)
    assert f"Checkpoint {checkpoint} has no MANIFEST.sha256.json" in caplog.text
    assert np.isfinite(policy.infer(libero_observation(0))["actions"]).all()


def test_without_a_manifest_truncated_or_nan_weights_are_still_refused(tmp_path, train_config, intact):
    checkpoint = _copy(intact, tmp_path)
    (checkpoint / checkpoint_integrity.MANIFEST_FILE).unlink()
    weights_file = checkpoint / "model.safetensors"
    content = weights_file.read_bytes()
    weights_file.write_bytes(content[: len(content) - 1000])
    with pytest.raises(policy_config.UnverifiedCheckpointError, match=re.escape(f"{weights_file} is truncated")):
        _create(train_config, checkpoint)
    weights_file.write_bytes(content)
    _overwrite(weights_file, len(content) - 64, b"\xff" * 16)  # four float32 NaNs in the last tensor
    with pytest.raises(policy_config.UnverifiedCheckpointError, match=r"1 weight tensor\(s\) hold NaN or infinite"):
        _create(train_config, checkpoint)


def _write_stats(checkpoint: Path, state: normalize.NormStats) -> Path:
    actions = normalize.NormStats(mean=np.zeros(7), std=np.ones(7), q01=-np.ones(7), q99=np.ones(7))
    return normalize.save(checkpoint / "assets" / ASSET_ID, {"state": state, "actions": actions})


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            normalize.NormStats(mean=np.zeros(5), std=np.ones(5), q01=-np.ones(5), q99=np.ones(5)),
            "'state' has 5 values but the robot's state has 8",
        ),
        (normalize.NormStats(mean=np.zeros(8), std=np.ones(8)), "'state' lacks q01/q99"),
    ],
    ids=["state cut to 5 values", "no quantiles under quantile normalisation"],
)
def test_norm_stats_that_cannot_serve_the_robot_are_refused_at_start_up(tmp_path, train_config, intact, state, message):
    checkpoint = _copy(intact, tmp_path)
    (checkpoint / checkpoint_integrity.MANIFEST_FILE).unlink()
    stats_file = _write_stats(checkpoint, state)
    assert train_config.model.pi05  # quantile normalisation
    with pytest.raises(ValueError, match=re.escape(f"Norm stats in {stats_file}: {message}")):
        _create(train_config, checkpoint)


def test_a_missing_tokenizer_stops_the_start_naming_where_it_looked(tmp_path, train_config, intact):
    absent = tmp_path / "absent_tokenizer.model"
    config = dataclasses.replace(train_config, data=dataclasses.replace(train_config.data, tokenizer_path=str(absent)))
    with pytest.raises(FileNotFoundError, match=r"PaliGemma tokenizer not found.*absent_tokenizer\.model"):
        _create(config, intact)
