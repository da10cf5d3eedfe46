"""Checks the PyTorch π0-FAST against its reference fixture (:mod:`openpi.models.fast_reference_fixture`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from openpi.models.fast_reference_fixture import FastReferenceFixture, errors_of
from openpi.models.observation import Observation
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch


def build_model(fixture: FastReferenceFixture, state_dict: Mapping[str, np.ndarray]) -> Pi0FastPytorch:
    """The fixture's model in eval mode with ``state_dict`` (the conversion of its orbax tree) loaded strictly."""
    model = Pi0FastPytorch(fixture.config)
    model.load_state_dict({key: torch.from_numpy(np.asarray(v)) for key, v in state_dict.items()}, strict=True)
    return model.eval()


def compare(model: Pi0FastPytorch, fixture: FastReferenceFixture) -> dict[str, float]:
    """Errors of logits, per-token NLL, loss, image tokens, greedy-decoded tokens and their logits."""
    train = Observation.from_dict(fixture.batch("train"))
    infer = Observation.from_dict(fixture.batch("infer"))
    with torch.no_grad():
        logits = model.token_logits(train)
        nll = model.token_nll(train)
        loss = model(train)
        images = {name: model.embed_image(train.images[name]) for name in fixture.camera_names}
        decoded = model.sample_tokens(infer, temperature=0.0, return_logits=True)
    return errors_of(fixture, logits, nll, loss, images, decoded.tokens, decoded.logits)
