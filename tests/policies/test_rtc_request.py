"""Real-time chunking through a policy and its server: a request with the previous chunk's unexecuted actions and the
measured delay continues them; a request without is plain; batches mix both; bad fields are refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from openpi.models import tokenizer
from openpi.models.pi0_config import RTCConfig
from openpi.policies import libero_policy, policy_config
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from tests.helpers.policies import PROMPTS, SAMPLE_KWARGS, libero_observation, make_train_config, write_checkpoint
from tests.helpers.serving import open_connection, round_trip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def train_config(tmp_path_factory):
    path = tokenizer.train_sentencepiece(PROMPTS, tmp_path_factory.mktemp("tok") / "tok", vocab_size=300)
    config = make_train_config(Path(path))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, rtc=RTCConfig(training_max_delay=3)))


@pytest.fixture(scope="module")
def policy(tmp_path_factory, train_config):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("ckpt"), train_config)
    return policy_config.create_trained_policy(
        train_config, checkpoint, sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu"
    )


def _noise(config, seed: int = 0) -> np.ndarray:
    shape = (config.model.action_horizon, config.model.action_dim)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _prev(steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (steps, libero_policy.ACTION_DIM)).astype(np.float32)


def test_metadata_lists_the_served_modes(policy):
    assert policy.metadata["rtc_modes"] == ["guided", "trained"]


def test_a_trained_policy_continues_the_committed_actions_in_robot_units(policy, train_config):
    prev = _prev(6)
    obs = {**libero_observation(0), "prev_actions": prev, "inference_delay": np.int64(2)}
    actions = policy.infer(obs, noise=_noise(train_config))["actions"]
    np.testing.assert_allclose(actions[:2], prev[:2], atol=1e-5)
    plain = policy.infer(libero_observation(0), noise=_noise(train_config))["actions"]
    assert not np.allclose(plain[:2], prev[:2], atol=1e-2)


def test_a_batch_mixing_rtc_and_plain_requests_equals_each_alone(policy, train_config):
    observations = [
        {**libero_observation(1), "prev_actions": _prev(5, 1), "inference_delay": 1},
        libero_observation(2),
        {**libero_observation(3), "prev_actions": _prev(8, 3), "inference_delay": 3, "rtc_mode": "guided"},
    ]
    noise = np.stack([_noise(train_config, i) for i in range(3)])
    batched = policy.infer_many(observations, noise=noise)
    for i, obs in enumerate(observations):
        alone = policy.infer(obs, noise=noise[i])["actions"]
        np.testing.assert_allclose(batched[i]["actions"], alone, atol=1e-4)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"inference_delay": 2}, "need 'prev_actions'"),
        ({"prev_actions": _prev(4), "inference_delay": 5}, "exceeds the 4 actions"),
        ({"prev_actions": _prev(11)}, "takes 1 to 10"),
        ({"prev_actions": _prev(4), "inference_delay": -1}, "non-negative integer"),
        ({"prev_actions": _prev(4), "rtc_mode": "magic"}, "must be one of"),
        ({"prev_actions": np.zeros(7, np.float32)}, "[steps, action_dim]"),
        ({"prev_actions": np.full((2, 7), np.nan, np.float32)}, "NaN"),
    ],
)
def test_bad_rtc_fields_are_refused_by_name(policy, fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        policy.infer({**libero_observation(0), **fields})


def test_a_guided_only_policy_refuses_the_trained_mode(tmp_path, train_config):
    plain_config = dataclasses.replace(train_config, model=dataclasses.replace(train_config.model, rtc=RTCConfig()))
    plain = policy_config.create_trained_policy(
        plain_config, write_checkpoint(tmp_path, plain_config), sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu"
    )
    assert plain.metadata["rtc_modes"] == ["guided"]
    with pytest.raises(ValueError, match="serves \\('guided',\\)"):
        plain.infer({**libero_observation(0), "prev_actions": _prev(4), "rtc_mode": "trained"})


def test_a_server_round_trip_with_and_without_the_fields(policy):
    prev = _prev(6)
    server = WebsocketPolicyServer(policy, "127.0.0.1", 0)
    with server.running_in_background() as port, open_connection(port) as (conn, metadata):
        assert metadata["rtc_modes"] == ["guided", "trained"]
        plain = round_trip(conn, libero_observation(0))
        continued = round_trip(conn, {**libero_observation(0), "prev_actions": prev, "inference_delay": 2})
        refused = round_trip(conn, {**libero_observation(0), "inference_delay": 2})
    assert plain["actions"].shape == continued["actions"].shape == (10, libero_policy.ACTION_DIM)
    np.testing.assert_allclose(continued["actions"][:2], prev[:2], atol=1e-5)
    assert isinstance(refused, str) and "need 'prev_actions'" in refused
