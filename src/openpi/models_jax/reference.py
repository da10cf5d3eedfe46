"""Checks the JAX model against the reference fixtures (:mod:`openpi.models.reference_fixture`), straight from the
orbax tree."""

from __future__ import annotations

import jax
import numpy as np

from openpi.models.reference_fixture import ReferenceFixture, relative_error
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0 import Pi0, embed_inputs, prefix_of


def build_model(fixture: ReferenceFixture) -> Pi0:
    """The fixture's model restored from its ``checkpoint/params`` (no conversion)."""
    if not fixture.is_jax:
        raise ValueError(
            f"{fixture.directory} holds PyTorch weights; the JAX model restores orbax trees (checkpoint/params)"
        )
    return Pi0.from_checkpoint(fixture.checkpoint_dir, fixture.config)


def observation(fixture: ReferenceFixture) -> JaxObservation:
    """The fixture's inputs as a JAX observation."""
    return JaxObservation.from_dict(fixture.batch())


def compare(model: Pi0, fixture: ReferenceFixture) -> dict[str, float]:
    """Relative errors of prefix embeddings, per-element loss and sampled actions (and prefix-mask mismatches),
    under the same keys as the PyTorch check."""
    io, obs = fixture.io, observation(fixture)
    prefix = prefix_of(jax.jit(embed_inputs, static_argnums=1)(model.params(), model.config, obs), None)
    if prefix.mask.shape != io["output.prefix_pad_mask"].shape:
        raise ValueError(
            f"Prefix length {prefix.mask.shape} differs from the reference {io['output.prefix_pad_mask'].shape}"
        )
    key = jax.random.key(0)
    loss = model.compute_loss(key, obs, io["input.actions"], noise=io["input.noise"], time=io["input.time"])
    actions = model.sample_actions(key, obs, noise=io["input.sample_noise"], num_steps=fixture.num_flow_steps)
    return {
        "prefix_embs": relative_error(prefix.embs, io["output.prefix_embs"]),
        "prefix_pad_mask_mismatches": float((np.asarray(prefix.mask) != io["output.prefix_pad_mask"]).sum()),
        "loss": relative_error(loss, io["output.loss"]),
        "sampled_actions": relative_error(actions, io["output.sampled_actions"]),
    }
