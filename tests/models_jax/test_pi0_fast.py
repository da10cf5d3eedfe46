"""The JAX π0-FAST over the published orbax tree against upstream's outputs (shared/reference/pi0_fast_tiny)."""

from __future__ import annotations

import numpy as np
import pytest

from openpi.models.fast_reference_fixture import FastReferenceFixture, passes
from openpi.models_jax import fast_reference, pi0_fast
from openpi.models_jax.observation import JaxObservation


@pytest.fixture(scope="module")
def fixture(reference_root) -> FastReferenceFixture:
    return FastReferenceFixture.load(reference_root / "pi0_fast_tiny")


@pytest.fixture(scope="module")
def model(fixture) -> pi0_fast.Pi0Fast:
    return fast_reference.build_model(fixture)


def test_matches_reference_outputs(model, fixture):
    errors = fast_reference.compare(model, fixture)
    assert passes(errors), errors


def test_decode_stops_at_max_decoding_steps(model, fixture):
    infer = JaxObservation.from_dict(fixture.batch("infer"))
    decoded = model.sample_tokens(infer, max_decoding_steps=4)
    assert int(decoded.steps) == 4
    np.testing.assert_array_equal(np.asarray(decoded.tokens), fixture.io["out/decode_tokens"][:, :4])
