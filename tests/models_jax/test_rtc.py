"""Real-time chunking in the JAX sampler and loss: the PyTorch model's semantics with static shapes (plain without a
previous chunk; guided and trained RTC with per-sample delays agree with the converted PyTorch model)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from openpi.conversion import convert
from openpi.models.observation import random_observation
from openpi.models.orbax_params import flatten_params
from openpi.models.pi0_config import RTCConfig, tiny_config
from openpi.models.reference_fixture import relative_error
from openpi.models_jax import params as jax_params
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0 import Pi0, compute_loss_fn, draw_training_noise
from openpi.models_jax.rtc import masked_loss_mean
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.weights import load_weights
from tests.helpers.conversion import write_orbax

CONFIG = tiny_config(action_horizon=6, max_token_len=16, rtc=RTCConfig(training_max_delay=2))
PARITY = 2e-3  # the frameworks' float32 sampling agrees to this relative error (as the converter's test)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Pi0, PI0Pytorch]:
    """A JAX model with every weight random (the zero-initialised adaRMS gates would hide the time) and its PyTorch
    conversion."""
    flat = flatten_params(Pi0(CONFIG, seed=0).params())
    rng = np.random.default_rng(0)
    flat = {path: (rng.standard_normal(v.shape) * 0.05).astype(np.float32) for path, v in flat.items()}
    model = Pi0(CONFIG, jax_params.nest(flat))
    directory = Path(tmp_path_factory.mktemp("rtc"))
    weights = convert.convert_checkpoint(write_orbax(directory / "jax", flat), CONFIG, directory / "pt", "float32")
    torch_model = PI0Pytorch(CONFIG)
    load_weights(torch_model, weights)
    return model, torch_model.eval()


def _inputs(batch: int = 3):
    torch_obs = random_observation(CONFIG, batch, valid_prompt_tokens=6, seed=1)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((batch, CONFIG.action_horizon, 32)).astype(np.float32)
    prev = rng.uniform(-1, 1, (batch, 5, 32)).astype(np.float32)
    return torch_obs, JaxObservation.from_dict(torch_obs.to_dict()), noise, prev


def test_without_a_previous_chunk_jax_sampling_is_plain(models):
    model, _ = models
    _, obs, noise, _ = _inputs()
    plain = np.asarray(model.sample_actions(jax.random.key(0), obs, noise=noise, num_steps=3))
    same = np.asarray(model.sample_actions(jax.random.key(0), obs, noise=noise, num_steps=3, prev_chunk=None))
    assert np.abs(same - plain).max() <= 1e-6


@pytest.mark.parametrize("mode", ["guided", "trained"])
def test_rtc_with_per_sample_delays_matches_pytorch(models, mode):
    model, torch_model = models
    torch_obs, obs, noise, prev = _inputs()
    kwargs = {"inference_delay": [0, 1, 2], "execution_horizon": [5, 3, 4], "rtc_mode": mode, "num_steps": 3}
    ours = np.asarray(model.sample_actions(jax.random.key(0), obs, noise=noise, prev_chunk=prev, **kwargs))
    with torch.no_grad():
        theirs = torch_model.sample_actions(
            torch_obs, noise=torch.from_numpy(noise), prev_chunk=torch.from_numpy(prev), **kwargs
        ).numpy()
    assert relative_error(theirs, ours) < PARITY
    plain = np.asarray(model.sample_actions(jax.random.key(0), obs, noise=noise, num_steps=3))
    assert relative_error(plain, ours) > 10 * PARITY  # the previous chunk changed the samples
    if mode == "trained":
        np.testing.assert_array_equal(ours[2, :2], prev[2, :2])


def test_the_rtc_loss_sees_the_committed_prefix_clean_and_leaves_it_out(models):
    model, _ = models
    _, obs, noise, _ = _inputs(2)
    actions = np.random.default_rng(2).standard_normal(noise.shape).astype(np.float32)
    delay, time = jnp.array([2, 0]), jnp.array([0.6, 0.6])

    def loss(noise_in):
        out, _ = compute_loss_fn(
            model.params(), obs, actions, noise_in, time, None, 0.0, config=CONFIG, train=False,
            prune=model.prune_settings(), rtc_delay=delay,
        )  # fmt: skip
        return np.asarray(out)

    moved = noise.copy()
    moved[0, :2] += 5.0
    first, second = loss(noise), loss(moved)
    np.testing.assert_allclose(second[0, 2:], first[0, 2:], rtol=1e-5, atol=1e-6)
    expected = np.concatenate([first[0, 2:].ravel(), first[1].ravel()]).mean()
    np.testing.assert_allclose(float(masked_loss_mean(jnp.asarray(first), delay)), expected, rtol=1e-6)


def test_training_draws_delays_only_for_an_rtc_config():
    drawn = draw_training_noise(jax.random.key(0), CONFIG, (64, 6, 32), 1)
    assert set(np.asarray(drawn.rtc_delay).tolist()) == {0, 1, 2}
    plain = dataclasses.replace(CONFIG, rtc=RTCConfig())
    assert draw_training_noise(jax.random.key(0), plain, (4, 6, 32), 1).rtc_delay is None
