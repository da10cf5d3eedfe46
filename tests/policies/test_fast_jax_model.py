"""A JAX π0-FAST checkpoint (orbax ``params/``) serves through the JAX model: it answers our websocket client, says
which rows did not decode, honours max_decoding_steps and temperature, and decodes what its PyTorch conversion
decodes."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from openpi import transforms
from openpi.conversion import convert
from openpi.models import tokenizer
from openpi.models.observation import Observation
from openpi.models_jax import params as jax_params
from openpi.models_jax.observation import JaxObservation
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch
from openpi.policies import policy_config
from openpi.policies.policy import DECODING_FAILED_KEY
from openpi.serving.websocket_client import WebsocketClientPolicy
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from tests.helpers.fast import fitted_tokenizer
from tests.helpers.policies import PROMPTS, libero_observation, make_train_config, write_norm_stats


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fast_jax_config")
    fast_dir = fitted_tokenizer(action_dim=7, vocab_size=300).save(tmp_path / "fast")
    config = make_train_config(
        tokenizer.train_sentencepiece(PROMPTS, tmp_path / "tok", vocab_size=300), "debug_pi0_fast"
    )
    return dataclasses.replace(config, model=dataclasses.replace(config.model, fast_tokenizer_path=str(fast_dir)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, config):
    """Random JAX parameters in the published layout, as the JAX trainer writes them, with LIBERO norm stats."""
    directory = tmp_path_factory.mktemp("fast_jax_ckpt")
    params = jax_params.init_params(config.model, seed=0)
    ocp.PyTreeCheckpointer().save((directory / "params").absolute(), {"params": params})
    return write_norm_stats(directory, action_shift=0.5)


@pytest.fixture(scope="module")
def policy(config, checkpoint):
    return policy_config.create_trained_policy(config, checkpoint, sample_kwargs={"max_decoding_steps": 6})


def test_served_jax_model_answers_the_websocket_client_and_reports_a_failed_decode(policy):
    assert policy.metadata["framework"] == "jax"
    with WebsocketPolicyServer(policy, "127.0.0.1", 0).running_in_background() as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        assert client.get_server_metadata()["pi0_fast"] is True
        reply = client.infer(libero_observation(0))
    # Random weights never write "Action: ...": the robot gets the zero normalised chunk (the middle of the range).
    assert bool(reply[DECODING_FAILED_KEY]) is True
    np.testing.assert_allclose(reply["actions"], np.full((10, 7), 0.5), atol=1e-6)
    assert reply["policy_timing"]["decode_steps"] <= 6


def test_max_decoding_steps_and_temperature_are_settings(policy):
    batch = transforms.stack_samples([policy.prepare(libero_observation(i)).inputs for i in range(2)])
    obs = JaxObservation.from_dict(batch)
    greedy = [np.asarray(policy.model.sample_tokens(obs, max_decoding_steps=3).tokens) for _ in range(2)]
    assert greedy[0].shape == (2, 3)
    np.testing.assert_array_equal(greedy[0], greedy[1])
    hot = policy.model.sample_tokens(obs, 3, temperature=50.0, rng=jax.random.key(1)).tokens
    assert not np.array_equal(np.asarray(hot), greedy[0])


def test_jax_checkpoint_decodes_what_its_pytorch_conversion_decodes(policy, config, checkpoint, tmp_path):
    converted = tmp_path / "converted"
    model = Pi0FastPytorch(config.model)
    model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in convert.convert_fast_params_dir(checkpoint, config.model).items()}
    )
    weights.save_weights(model, converted)
    write_norm_stats(converted, action_shift=0.5)
    torch_policy = policy_config.create_trained_policy(
        config, converted, sample_kwargs={"max_decoding_steps": 6}, pytorch_device="cpu"
    )
    assert torch_policy.metadata["framework"] == "pytorch"
    batch = transforms.stack_samples([policy.prepare(libero_observation(i)).inputs for i in range(3)])
    jax_out = policy.model.sample_tokens(JaxObservation.from_dict(batch), 8, return_logits=True)
    torch_out = torch_policy.model.sample_tokens(Observation.from_dict(batch), 8, return_logits=True)
    np.testing.assert_array_equal(np.asarray(jax_out.tokens), torch_out.tokens.numpy())
    np.testing.assert_allclose(np.asarray(jax_out.logits), torch_out.logits.numpy(), rtol=1e-4, atol=1e-4)
