"""Our PyTorch π0-FAST computes what upstream's JAX π0-FAST computed (shared/reference/pi0_fast_tiny)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from openpi.conversion import convert
from openpi.models.fast_reference_fixture import FastReferenceFixture, passes
from openpi.models.observation import Observation
from openpi.models_pytorch import fast_reference
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch


@pytest.fixture(scope="module")
def fixture(reference_root) -> FastReferenceFixture:
    return FastReferenceFixture.load(reference_root / "pi0_fast_tiny")


@pytest.fixture(scope="module")
def model(fixture) -> Pi0FastPytorch:
    return fast_reference.build_model(fixture, convert.convert_fast_params_dir(fixture.checkpoint_dir, fixture.config))


def test_matches_reference_outputs(model, fixture):
    errors = fast_reference.compare(model, fixture)
    assert passes(errors), errors


def test_decode_stops_at_max_decoding_steps_and_rows_are_independent(model, fixture):
    infer = Observation.from_dict(fixture.batch("infer"))
    short = model.sample_tokens(infer.select(slice(1, 3)), max_decoding_steps=5)
    assert short.tokens.shape == (2, 5) and short.steps == 5
    expected = torch.from_numpy(fixture.io["out/decode_tokens"][1:3, :5]).long()
    torch.testing.assert_close(short.tokens, expected)


def test_sampling_with_a_temperature_draws_other_tokens(model, fixture):
    infer = Observation.from_dict(fixture.batch("infer"))
    hot = model.sample_tokens(infer, temperature=5.0, generator=torch.Generator().manual_seed(0))
    assert (hot.tokens.numpy() != fixture.io["out/decode_tokens"]).any()


def test_bfloat16_decodes_and_scores_close_to_float32(fixture):
    state = convert.convert_fast_params_dir(fixture.checkpoint_dir, fixture.config)
    bf16 = Pi0FastPytorch(dataclasses.replace(fixture.config, dtype="bfloat16"))
    bf16.load_state_dict({k: torch.from_numpy(v).to(bf16.state_dict()[k].dtype) for k, v in state.items()})
    with torch.no_grad():
        loss = bf16.eval()(Observation.from_dict(fixture.batch("train")))
    torch.testing.assert_close(loss, torch.from_numpy(fixture.io["out/loss"]), rtol=5e-2, atol=0)
