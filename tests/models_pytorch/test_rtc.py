"""Real-time chunking in the PyTorch sampler and trainer: plain without a previous chunk, the frozen prefix followed,
per-sample delays in a batch, the committed prefix clean and out of the loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from openpi.models.observation import random_observation
from openpi.models.pi0_config import RTCConfig
from openpi.models_pytorch import rtc
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from tests.helpers.models import COMPILED_PRUNED_CONFIG, randomized

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = dataclasses.replace(COMPILED_PRUNED_CONFIG, action_horizon=8, token_pruning_enabled=False)
TRAINED = dataclasses.replace(CONFIG, rtc=RTCConfig(training_max_delay=3))
# Guided RTC at the default clip (10) follows a frozen prefix in [-1, 1] to within this at 10 steps (measured: at most
# 0.026 over three draws; 0.16 with a clip of 5, 1.6 with 1).
FROZEN_PREFIX_TOLERANCE = 0.05


def _model(config=CONFIG, seed: int = 0) -> PI0Pytorch:
    return randomized(PI0Pytorch(config), seed=seed, scale=0.05).eval()


def _inputs(batch: int, config=CONFIG, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    observation = random_observation(config, batch, seed=seed, valid_prompt_tokens=8)
    noise = torch.randn(batch, config.action_horizon, config.action_dim, generator=generator)
    prev = torch.randn(batch, config.action_horizon, config.action_dim, generator=generator)
    return observation, noise, prev


def test_without_a_previous_chunk_sampling_is_plain():
    model = _model()
    observation, noise, _ = _inputs(2)
    plain = model.sample_actions(observation, noise=noise, num_steps=4)
    same = model.sample_actions(observation, noise=noise, num_steps=4, prev_chunk=None, inference_delay=3)
    assert (same - plain).abs().max() <= 1e-6


def test_zero_weights_guide_nothing():
    model = _model(dataclasses.replace(CONFIG, rtc=RTCConfig(prefix_attention_schedule="zeros")))
    observation, noise, prev = _inputs(2)
    plain = model.sample_actions(observation, noise=noise, num_steps=4)
    unguided = model.sample_actions(observation, noise=noise, num_steps=4, prev_chunk=prev, inference_delay=0)
    assert (unguided - plain).abs().max() <= 1e-6


def test_guided_rtc_with_a_large_weight_reproduces_the_frozen_prefix():
    model = _model(dataclasses.replace(CONFIG, rtc=RTCConfig(max_guidance_weight=10.0)))
    observation, noise, prev = _inputs(2)
    prev = prev.clamp(-1, 1)
    delay = 3
    plain = model.sample_actions(observation, noise=noise, num_steps=10)
    guided = model.sample_actions(observation, noise=noise, num_steps=10, prev_chunk=prev, inference_delay=delay)
    error = (guided[:, :delay] - prev[:, :delay]).abs().max()
    assert error <= FROZEN_PREFIX_TOLERANCE, error
    assert (plain[:, :delay] - prev[:, :delay]).abs().max() > 0.5  # without guidance the prefix is elsewhere
    tail = slice(CONFIG.action_horizon - 1, None)  # past the horizon the weights are 0: only the context pulls
    assert (guided[:, tail] - prev[:, tail]).abs().max() > 0.1


def test_trained_rtc_holds_the_committed_prefix_exactly():
    model = _model(TRAINED)
    observation, noise, prev = _inputs(2, TRAINED)
    actions = model.sample_actions(observation, noise=noise, num_steps=3, prev_chunk=prev, inference_delay=[1, 3])
    assert torch.equal(actions[0, :1], prev[0, :1]) and torch.equal(actions[1, :3], prev[1, :3])
    assert not torch.equal(actions[0, 1:3], prev[0, 1:3])


def test_trained_mode_needs_a_model_trained_with_rtc():
    observation, noise, prev = _inputs(1)
    with pytest.raises(ValueError, match="training_max_delay"):
        _model().sample_actions(observation, noise=noise, prev_chunk=prev, inference_delay=1, rtc_mode="trained")


@pytest.mark.parametrize("mode", ["guided", "trained"])
def test_a_batch_with_per_sample_delays_equals_serial_calls(mode):
    model = _model(TRAINED)
    observation, noise, prev = _inputs(3, TRAINED)
    delays, horizons = [0, 2, 4], [6, 5, 8]
    batched = model.sample_actions(
        observation,
        noise=noise,
        num_steps=3,
        prev_chunk=prev[:, :6],
        inference_delay=delays,
        execution_horizon=horizons,
        rtc_mode=mode,
    )
    for i in range(3):
        one = model.sample_actions(
            _slice(observation, i),
            noise=noise[i : i + 1],
            num_steps=3,
            prev_chunk=prev[i : i + 1, :6],
            inference_delay=delays[i],
            execution_horizon=horizons[i],
            rtc_mode=mode,
        )
        torch.testing.assert_close(batched[i : i + 1], one, rtol=1e-5, atol=1e-5)


def test_guided_rtc_runs_with_pruning_and_a_compiled_prefix():
    config = dataclasses.replace(COMPILED_PRUNED_CONFIG, token_prune_kept_multiple=16)
    model = randomized(PI0Pytorch(config)).eval()
    observation, noise, prev = _inputs(2, config)
    eager = model.sample_actions(observation, noise=noise, num_steps=2, prev_chunk=prev, inference_delay=1)
    model.compile_sampling(backend="eager", dynamic=False)
    compiled = model.sample_actions(observation, noise=noise, num_steps=2, prev_chunk=prev, inference_delay=1)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("ones", [1, 1, 1, 1, 1, 0, 0, 0]),
        ("zeros", [1, 1, 0, 0, 0, 0, 0, 0]),
        ("linear", [1, 1, 0.75, 0.5, 0.25, 0, 0, 0]),
    ],
)
def test_prefix_weights_freeze_d_and_reach_zero_at_s(schedule, expected):
    weights = rtc.prefix_weights(torch.tensor([2]), torch.tensor([5]), 8, schedule)
    torch.testing.assert_close(weights[0], torch.tensor(expected, dtype=torch.float32))


def test_exponential_weights_decay_below_linear():
    linear = rtc.prefix_weights(torch.tensor([2]), torch.tensor([5]), 8, "linear")
    exp = rtc.prefix_weights(torch.tensor([2]), torch.tensor([5]), 8, "exp")
    assert torch.equal(exp[0, :2], linear[0, :2]) and (exp[0, 2:5] < linear[0, 2:5]).all()
    assert (exp[0, 5:] == 0).all()


def test_guidance_weight_is_clipped():
    assert rtc.guidance_weight(1.0, 10.0) == 10.0
    assert rtc.guidance_weight(0.5, 10.0) == pytest.approx(2.0)


def test_training_rtc_gives_the_prefix_clean_and_masks_exactly_its_loss():
    model = _model(TRAINED).train()
    observation, noise, _ = _inputs(2, TRAINED)
    actions = torch.randn(2, TRAINED.action_horizon, TRAINED.action_dim)
    delay = torch.tensor([2, 0])
    loss = model(observation, actions, noise=noise, time=torch.tensor([0.7, 0.7]), rtc_delay=delay)
    other_noise = noise.clone()
    other_noise[0, :2] += 5.0  # the committed actions are clean: their noise is never seen
    again = model(observation, actions, noise=other_noise, time=torch.tensor([0.7, 0.7]), rtc_delay=delay)
    torch.testing.assert_close(again[0, 2:], loss[0, 2:])
    mask = rtc.committed_mask(delay, TRAINED.action_horizon)
    assert mask.tolist() == [[True, True] + [False] * 6, [False] * 8]
    expected = loss[~mask].mean()
    torch.testing.assert_close(rtc.masked_loss_mean(loss, delay), expected)
    changed = loss.clone()
    changed[0, :2] = 1e6  # a committed action's loss never reaches the mean
    torch.testing.assert_close(rtc.masked_loss_mean(changed, delay), expected)


def test_training_delays_cover_zero_to_the_maximum():
    delays = rtc.sample_training_delay(2000, 3, "cpu", torch.Generator().manual_seed(0))
    assert set(delays.tolist()) == {0, 1, 2, 3}


def _slice(observation, index: int):
    return dataclasses.replace(
        observation,
        images={k: v[index : index + 1] for k, v in observation.images.items()},
        image_masks={k: v[index : index + 1] for k, v in observation.image_masks.items()},
        state=observation.state[index : index + 1],
        tokenized_prompt=observation.tokenized_prompt[index : index + 1],
        tokenized_prompt_mask=observation.tokenized_prompt_mask[index : index + 1],
    )
