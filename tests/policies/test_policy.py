"""Policy and create_trained_policy: a tiny checkpoint on disk, LIBERO observations in, unnormalised actions out."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from openpi.models import tokenizer
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies import data_config, libero_policy, pipeline, policy_config
from openpi.training import config as _config
from tests.helpers.policies import (
    CONFIG_NAME,
    PROMPTS,
    SAMPLE_KWARGS,
    libero_observation,
    make_train_config,
    write_checkpoint,
)


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """The tiny model runs several times faster on one thread than on two oversubscribed cores (CI: ``-n 2``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    return tokenizer.train_sentencepiece(PROMPTS, tmp_path_factory.mktemp("tok") / "tok", vocab_size=300)


@pytest.fixture(scope="module")
def train_config(tokenizer_path) -> _config.TrainConfig:
    return make_train_config(tokenizer_path)


@pytest.fixture(scope="module")
def policy(tmp_path_factory, train_config):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("ckpt"), train_config)
    return policy_config.create_trained_policy(
        train_config, checkpoint, default_prompt="do the task", sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu"
    )


def _noise(config: _config.TrainConfig, seed: int = 0) -> np.ndarray:
    shape = (config.model.action_horizon, config.model.action_dim)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_infer_returns_a_robot_action_chunk_and_timing(policy, train_config):
    result = policy.infer(libero_observation(0))
    assert result["actions"].shape == (train_config.model.action_horizon, libero_policy.ACTION_DIM)
    assert np.all(np.isfinite(result["actions"]))
    timing = result["policy_timing"]
    assert timing["infer_ms"] > 0 and timing["prefix_ms"] > 0 and timing["denoise_ms"] > 0
    assert timing["prefix_ms"] + timing["denoise_ms"] <= timing["infer_ms"]
    assert policy.metadata["config"] == CONFIG_NAME
    assert policy.metadata["action_horizon"] == train_config.model.action_horizon


def test_actions_are_unnormalised_with_the_checkpoint_norm_stats(tmp_path, policy, train_config):
    shifted = policy_config.create_trained_policy(
        train_config,
        write_checkpoint(tmp_path, train_config, action_shift=5.0),
        sample_kwargs=SAMPLE_KWARGS,
        pytorch_device="cpu",
    )
    obs, noise = libero_observation(1), _noise(train_config)
    base = policy.infer(obs, noise=noise)["actions"]
    moved = shifted.infer(obs, noise=noise)["actions"]
    np.testing.assert_allclose(moved - base, 5.0, atol=1e-4)


def test_batched_inference_matches_single_observations(policy, train_config):
    observations = [libero_observation(2), libero_observation(3, prompt=PROMPTS[2])]
    noise = np.stack([_noise(train_config, 0), _noise(train_config, 1)])
    batched = policy.infer_batch(observations, noise=noise)["actions"]
    assert batched.shape == (2, train_config.model.action_horizon, libero_policy.ACTION_DIM)
    for i, obs in enumerate(observations):
        np.testing.assert_allclose(batched[i], policy.infer(obs, noise=noise[i])["actions"], atol=1e-4)


def test_default_prompt_fills_in_a_missing_prompt(policy, train_config):
    noise = _noise(train_config)
    without = policy.infer(libero_observation(4, prompt=None), noise=noise)["actions"]
    explicit = policy.infer(libero_observation(4, prompt="do the task"), noise=noise)["actions"]
    np.testing.assert_allclose(without, explicit, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda obs: obs.pop("observation/state"), KeyError, "observation/state"),
        (lambda obs: obs.update({"observation/state": np.zeros(5, np.float32)}), ValueError, "8 values"),
        (lambda obs: obs.update({"observation/image": np.zeros((9, 9), np.uint8)}), ValueError, "observation/image"),
        (lambda obs: obs.update({"observation/wrist_image": np.array(["a", "b"])}), ValueError, "wrist_image"),
    ],
)
def test_bad_observations_raise_errors_naming_the_key(policy, change, error, message):
    obs = libero_observation(5)
    change(obs)
    with pytest.raises(error, match=message):
        policy.infer(obs)


def test_missing_checkpoint_files_are_reported(tmp_path, train_config):
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        policy_config.create_trained_policy(train_config, tmp_path)
    torch.manual_seed(0)
    weights.save_weights(PI0Pytorch(train_config.model), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"norm_stats\.json"):
        policy_config.create_trained_policy(train_config, tmp_path)


def test_a_checkpoint_trained_on_other_data_is_refused_not_given_the_configs_norm_stats(
    tmp_path, train_config, tokenizer_path
):
    """The checkpoint holds LIBERO's stats; a data config with its own (identity) stats under another asset id must
    not quietly serve it with those."""
    checkpoint = write_checkpoint(tmp_path, train_config)
    other_data = dataclasses.replace(train_config, data=data_config.FakeDataConfig(tokenizer_path=str(tokenizer_path)))
    with pytest.raises(ValueError, match=r"norm stats for \['physical-intelligence/libero'\], not for .* 'fake'"):
        policy_config.create_trained_policy(other_data, checkpoint, pytorch_device="cpu")


def test_a_request_can_ask_a_pruning_policy_for_its_kept_patches(tmp_path, tokenizer_path):
    config = make_train_config(tokenizer_path, "debug_pi05_lightvla")
    policy = policy_config.create_trained_policy(
        config, write_checkpoint(tmp_path, config), sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu"
    )
    assert "kept_patch_mask" not in policy.infer(libero_observation(0))
    asked = policy.infer({**libero_observation(0), "return_kept_patches": True})
    vision = config.model.vision_config
    patches = 3 * (vision.image_size // vision.patch_size) ** 2
    assert asked["kept_patch_mask"].shape == (patches,) and asked["kept_patch_mask"].dtype == bool
    assert 0 < asked["kept_patch_mask"].sum() == round(asked["token_pruning"]["kept_tokens_overall_mean"])


def test_warmup_runs_the_model_at_each_batch_size(policy):
    policy.warmup(batch_sizes=(1, 2))
    assert policy.model.last_timing_ms["prefix_ms"] > 0


def test_batch_buckets_pad_a_call_without_changing_any_reply(tmp_path, tokenizer_path, monkeypatch):
    config = make_train_config(tokenizer_path, "debug_pi05_lightvla")
    checkpoint = write_checkpoint(tmp_path, config)
    plain, bucketed = (
        policy_config.create_trained_policy(
            config, checkpoint, sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu", batch_buckets=buckets
        )
        for buckets in (None, (1, 4))
    )
    run_sizes = []
    sample = bucketed.model.sample_actions
    monkeypatch.setattr(
        bucketed.model, "sample_actions", lambda obs, **kw: run_sizes.append(len(obs.state)) or sample(obs, **kw)
    )
    observations = [{**libero_observation(i, prompt=PROMPTS[i]), "return_kept_patches": True} for i in range(3)]
    noise = np.stack([_noise(config, i) for i in range(3)])
    expected, actual = plain.infer_many(observations, noise=noise), bucketed.infer_many(observations, noise=noise)
    assert run_sizes == [4] and len(actual) == 3
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got["actions"], want["actions"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["kept_patch_mask"], want["kept_patch_mask"])
    bucketed.warmup()
    assert run_sizes == [4, 1, 4]
    with pytest.raises(ValueError, match="largest batch bucket 4"):
        bucketed.infer_many([libero_observation(0)] * 5)
    with pytest.raises(ValueError, match="ascending"):
        policy_config.create_trained_policy(config, checkpoint, pytorch_device="cpu", batch_buckets=(4, 2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"observation/state": {"x": np.zeros(8)}}, "'observation/state' must be an array, got a dict"),
        ({"return_kept_patches": np.ones(3, bool)}, "'return_kept_patches' must be true or false, got ndarray"),
        ({"request_id": np.int64(7)}, r"unknown key\(s\) 'request_id'"),
        ({"extra": {"a": np.zeros(2)}}, r"unknown key\(s\) 'extra'"),
        ({"token_prune_keep_ratio": 0.1}, "'token_prune_keep_ratio' cannot be set per request"),
        ({"observation/state": np.full(8, 1e39)}, "'observation/state' holds 1e\\+39, which does not fit float32"),
        ({"observation/state": np.full(8, 1e6)}, r"'state' dimension 0 is 1e\+06, outside \[-21, 21\]"),
    ],
    ids=["state as a dict", "flag as an array", "unknown number", "unknown dict", "budget", "1e39", "1e6"],
)
def test_observations_a_robot_must_not_be_answered_for_are_refused_naming_the_key(policy, change, message):
    with pytest.raises(ValueError, match=message):
        policy.infer({**libero_observation(0), **change})


def test_a_state_range_in_warn_mode_serves_and_logs(tmp_path, train_config, caplog):
    warned = policy_config.create_trained_policy(
        train_config,
        write_checkpoint(tmp_path, train_config),
        sample_kwargs=SAMPLE_KWARGS,
        pytorch_device="cpu",
        state_range=pipeline.StateRange(limit=2.0, mode="warn"),
    )
    result = warned.infer({**libero_observation(0), "observation/state": np.full(8, 5.5, np.float32)})
    assert np.isfinite(result["actions"]).all()
    assert "'state' dimension 0 is 5.5, outside [-5, 5]" in caplog.text


def test_only_the_requests_that_ask_get_the_kept_patches(tmp_path, tokenizer_path):
    config = make_train_config(tokenizer_path, "debug_pi05_lightvla")
    policy = policy_config.create_trained_policy(
        config, write_checkpoint(tmp_path, config), sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu"
    )
    asked, plain = policy.infer_many([{**libero_observation(0), "return_kept_patches": True}, libero_observation(1)])
    assert asked["kept_patch_mask"].dtype == bool and "kept_patch_mask" not in plain
