"""Checks the JAX π0-FAST against its reference fixture (:mod:`openpi.models.fast_reference_fixture`), straight
from the orbax tree."""

from __future__ import annotations

import jax

from openpi.models.fast_reference_fixture import FastReferenceFixture, errors_of
from openpi.models_jax import pi0_fast
from openpi.models_jax.observation import JaxObservation


def build_model(fixture: FastReferenceFixture) -> pi0_fast.Pi0Fast:
    """The fixture's model restored from ``checkpoint/params`` (no conversion)."""
    return pi0_fast.Pi0Fast.from_checkpoint(fixture.checkpoint_dir, fixture.config)


def compare(model: pi0_fast.Pi0Fast, fixture: FastReferenceFixture) -> dict[str, float]:
    """The same errors as the PyTorch check: logits, NLL, loss, image tokens, greedy decode."""
    params, config = model.params(), model.config
    train = JaxObservation.from_dict(fixture.batch("train"))
    infer = JaxObservation.from_dict(fixture.batch("infer"))
    embed = jax.jit(pi0_fast.embed_image, static_argnums=1)
    images = {name: embed(params, config, train.images[name]) for name in fixture.camera_names}
    decoded = model.sample_tokens(infer, temperature=0.0, return_logits=True)
    return errors_of(
        fixture,
        pi0_fast.token_logits(params, config, train),
        pi0_fast.token_nll(params, config, train),
        model.compute_loss(train),
        images,
        decoded.tokens,
        decoded.logits,
    )
