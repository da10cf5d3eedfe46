"""π0-FAST with LightVLA pruning at inference: the decode prefix keeps the pruner's image tokens at their unpruned
positions (checked on the pi0_fast_tiny fixture)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from openpi.conversion import convert
from openpi.models.fast_reference_fixture import FastReferenceFixture
from openpi.models.observation import Observation
from openpi.models_pytorch import fast_reference
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch


@pytest.fixture(scope="module")
def fixture(reference_root) -> FastReferenceFixture:
    return FastReferenceFixture.load(reference_root / "pi0_fast_tiny")


def _pruned(fixture: FastReferenceFixture, keep_ratio: float) -> Pi0FastPytorch:
    config = dataclasses.replace(fixture.config, token_pruning_enabled=True, token_prune_keep_ratio=keep_ratio)
    state = convert.convert_fast_params_dir(fixture.checkpoint_dir, fixture.config)
    return fast_reference.build_model(dataclasses.replace(fixture, config=config), state)


def test_keeping_every_patch_decodes_as_the_unpruned_model(fixture):
    infer = Observation.from_dict(fixture.batch("infer")).select(slice(1, 3))  # both cameras present
    decoded = _pruned(fixture, 1.0).sample_tokens(infer)
    torch.testing.assert_close(decoded.tokens, torch.from_numpy(fixture.io["out/decode_tokens"][1:]).long())


def test_a_budget_keeps_its_share_of_the_valid_patches_and_shortens_the_cache(fixture):
    model = _pruned(fixture, 0.25)
    infer = Observation.from_dict(fixture.batch("infer"))
    decoded = model.sample_tokens(infer, max_decoding_steps=4)
    selection = model.token_pruner.last_selection
    assert selection.mask.sum(-1).tolist() == [64, 128, 128]  # ceil(0.25 * valid): sample 0 has one camera
    assert decoded.tokens.shape == (3, 4)
    assert not (decoded.tokens.numpy() == fixture.io["out/decode_tokens"][:, :4]).all()
