"""Bounded shapes for compiled pruned inference: the kept count and the prompt are padded to multiples (exactly), so
a compiled model recompiles once per bucket, not once per observation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from openpi.cli import serve_policy
from openpi.models.observation import random_observation
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.training import config as _config
from tests.helpers.models import COMPILED_PRUNED_CONFIG, randomized

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = COMPILED_PRUNED_CONFIG


def _observation(seed: int, batch_size: int = 1):
    return random_observation(CONFIG, batch_size, seed=seed, valid_prompt_tokens=8 + seed % 8)


def test_padding_the_kept_count_leaves_the_actions_unchanged():
    plain = randomized(PI0Pytorch(CONFIG)).eval()
    bucketed = PI0Pytorch(dataclasses.replace(CONFIG, token_prune_kept_multiple=16)).eval()
    bucketed.load_state_dict(plain.state_dict())
    observation = _observation(3, batch_size=2)
    noise = torch.randn(2, CONFIG.action_horizon, CONFIG.action_dim, generator=torch.Generator().manual_seed(0))
    expected = plain.sample_actions(observation, noise=noise, num_steps=2)
    actual = bucketed.sample_actions(observation, noise=noise, num_steps=2)
    assert bucketed.pruner.last_selection.mask.shape[1] % 16 == 0
    assert bucketed.pruner.last_selection.mask.shape[1] > plain.pruner.last_selection.mask.shape[1]
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("multiple", [16, None])
def test_a_compiled_model_recompiles_once_per_bucket(multiple):
    model = randomized(PI0Pytorch(dataclasses.replace(CONFIG, token_prune_kept_multiple=multiple))).eval()
    compiles: list[int] = []

    def counting_backend(graph_module, example_inputs):
        compiles.append(1)
        return graph_module.forward

    torch._dynamo.reset()
    encode = torch.compile(model.encode_prefix, backend=counting_backend, dynamic=False)
    seen, grew_on_new_shape = set(), []
    for seed in range(8):
        before = len(compiles)
        encode(_observation(seed))
        shape = model.pruner.last_selection.mask.shape[1]
        grew_on_new_shape.append((len(compiles) > before, shape not in seen))
        seen.add(shape)
    assert all(grew == new for grew, new in grew_on_new_shape[1:]), grew_on_new_shape
    if multiple is not None:
        assert len(seen) <= 2 < 8
    else:
        assert len(seen) > 2, "the control: without buckets the kept count varies with the observation"


def test_serving_with_a_compile_mode_buckets_the_kept_count():
    config = _config.get_config("pi05_libero_pytorch_lightvla")
    assert serve_policy.with_compile(config, None) is config
    compiled = serve_policy.with_compile(config, "max-autotune").model
    assert compiled.pytorch_compile_mode == "max-autotune" and compiled.token_prune_kept_multiple == 16


def test_serving_with_a_compile_mode_buckets_the_batch():
    buckets = serve_policy.batch_buckets
    assert buckets(serve_policy.Args()) is None
    assert buckets(serve_policy.Args(compile_mode="default")) == (1, 2, 4, 8, 16)
    assert buckets(serve_policy.Args(compile_mode="default", max_batch=6)) == (1, 2, 4, 6)
    assert buckets(serve_policy.Args(batch_buckets=(2, 16))) == (2, 16)
    with pytest.raises(ValueError, match="must reach --max-batch 16"):
        buckets(serve_policy.Args(batch_buckets=(1, 8)))
