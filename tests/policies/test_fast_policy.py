"""A served π0-FAST: replies through our websocket client, says which rows did not decode (and sends the fallback
chunk), honours max_decoding_steps and temperature, and reads rows that end at different steps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from openpi import transforms
from openpi.models import tokenizer
from openpi.models.fast_prompt import FastPromptTokenizer
from openpi.models.observation import Observation
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch
from openpi.policies import policy_config
from openpi.policies.fast_transforms import decode_actions
from openpi.policies.policy import DECODING_FAILED_KEY
from openpi.serving.websocket_client import WebsocketClientPolicy
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from tests.helpers.fast import CrcTextEncoder, fitted_tokenizer, smooth_chunks
from tests.helpers.policies import PROMPTS, libero_observation, make_train_config, write_norm_stats


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fast_policy")
    fast_dir = fitted_tokenizer(action_dim=7, vocab_size=300).save(tmp_path / "fast")
    config = make_train_config(
        tokenizer.train_sentencepiece(PROMPTS, tmp_path / "tok", vocab_size=300), "debug_pi0_fast"
    )
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, fast_tokenizer_path=str(fast_dir)))
    torch.manual_seed(0)
    checkpoint = tmp_path / "ckpt"
    weights.save_weights(Pi0FastPytorch(config.model), checkpoint)
    write_norm_stats(checkpoint, action_shift=0.5)
    return policy_config.create_trained_policy(
        config, checkpoint, sample_kwargs={"max_decoding_steps": 6}, pytorch_device="cpu"
    )


def test_served_model_answers_the_websocket_client_and_reports_a_failed_decode(policy):
    with WebsocketPolicyServer(policy, "127.0.0.1", 0).running_in_background() as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        assert client.get_server_metadata()["pi0_fast"] is True
        reply = client.infer(libero_observation(0))
    # Random weights never write "Action: ...": the robot gets the zero normalised chunk, i.e. the middle of the
    # training range (q01 = shift - 2, q99 = shift + 2), and the reply says so.
    assert bool(reply[DECODING_FAILED_KEY]) is True
    np.testing.assert_allclose(reply["actions"], np.full((10, 7), 0.5), atol=1e-6)


def test_an_absent_camera_is_attended_to_as_upstream_fast_does(policy):
    inputs = policy.prepare(libero_observation(0)).inputs
    # LIBERO has no right-wrist camera: π0 masks the slot, upstream's π0-FAST attends to its zero image.
    assert {name: bool(mask) for name, mask in inputs["image_mask"].items()} == dict.fromkeys(inputs["image"], True)
    assert not inputs["image"]["right_wrist_0_rgb"].any()


def test_max_decoding_steps_and_temperature_are_settings(policy):
    assert policy.infer(libero_observation(1))["policy_timing"]["decode_steps"] <= 6  # the policy's setting
    batch = transforms.stack_samples([policy.prepare(libero_observation(i)).inputs for i in range(2)])
    obs = Observation.from_dict(batch)
    greedy = [policy.model.sample_tokens(obs, max_decoding_steps=3).tokens for _ in range(2)]
    assert greedy[0].shape == (2, 3) and torch.equal(greedy[0], greedy[1])
    hot = policy.model.sample_tokens(obs, 3, temperature=50.0, generator=torch.Generator().manual_seed(0)).tokens
    assert not torch.equal(hot, greedy[0])


def test_rows_ending_at_different_steps_decode_independently():
    fast = fitted_tokenizer()
    prompt_tokenizer = FastPromptTokenizer(CrcTextEncoder(), fast, vocab_size=1024, max_len=128)
    rows, chunks = [], smooth_chunks(2, seed=5)
    for chunk in chunks:
        seq = prompt_tokenizer.tokenize("go", np.zeros(8), chunk)
        postfix = seq.tokens[seq.mask & (seq.ar_mask == 1)]
        rows.append(postfix.tolist())
    width = max(map(len, rows)) + 3
    generated = np.array([r + [0] * (width - len(r)) for r in rows] + [[7] * width])  # the third row: no actions
    decoded, failed = decode_actions(prompt_tokenizer, generated)
    assert failed.tolist() == [False, False, True]
    for i, chunk in enumerate(chunks):
        np.testing.assert_allclose(decoded[i], fast.decode(fast.encode(chunk)), atol=1e-6)
    assert not decoded[2].any()
