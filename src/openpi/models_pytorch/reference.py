"""Checks the PyTorch model against the reference fixtures (:mod:`openpi.models.reference_fixture`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from openpi.models.observation import Observation
from openpi.models.reference_fixture import ReferenceFixture, relative_error
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.weights import load_weights


def build_model(fixture: ReferenceFixture, state_dict: Mapping[str, np.ndarray] | None = None) -> PI0Pytorch:
    """The fixture's model in eval mode with ``state_dict`` loaded (strictly), else its ``*_weights.safetensors``.

    A ``jax_*`` fixture holds an orbax tree: pass its conversion (``openpi.conversion.convert.convert_params_dir``).
    """
    model = PI0Pytorch(fixture.config)
    if state_dict is not None:
        model.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()}, strict=True)
    elif fixture.is_jax:
        raise ValueError(
            f"{fixture.directory} holds a JAX tree (checkpoint/params): convert it with "
            "openpi.conversion.convert.convert_params_dir and pass the state dict"
        )
    else:
        load_weights(model, fixture.weights_file)
    return model.eval()


def observation(fixture: ReferenceFixture) -> Observation:
    """The fixture's inputs as a (new) torch observation."""
    return Observation.from_dict(fixture.batch())


def tensors(fixture: ReferenceFixture) -> dict[str, torch.Tensor]:
    """The fixture's inputs and outputs as torch tensors."""
    return {key: torch.from_numpy(value) for key, value in fixture.io.items()}


def compare(model: PI0Pytorch, fixture: ReferenceFixture) -> dict[str, float]:
    """Relative errors of prefix embeddings, per-element loss and sampled actions (and prefix-mask mismatches)."""
    obs, io = observation(fixture), tensors(fixture)
    images = list(obs.images.values())
    masks = [obs.image_masks[name] for name in obs.images]
    with torch.no_grad():
        prefix = model.embed_prefix(images, masks, obs.tokenized_prompt, obs.tokenized_prompt_mask)
        embs, pad = prefix.embs, prefix.pad_masks
        loss = model.forward(obs, io["input.actions"], noise=io["input.noise"], time=io["input.time"])
        actions = model.sample_actions(obs, noise=io["input.sample_noise"], num_steps=fixture.num_flow_steps)
    ref_pad = io["output.prefix_pad_mask"].bool()
    if pad.shape != ref_pad.shape:
        raise ValueError(f"Prefix length {tuple(pad.shape)} differs from the reference {tuple(ref_pad.shape)}")
    return {
        "prefix_embs": relative_error(embs, io["output.prefix_embs"]),
        "prefix_pad_mask_mismatches": float((pad != ref_pad).sum()),
        "loss": relative_error(loss, io["output.loss"]),
        "sampled_actions": relative_error(actions, io["output.sampled_actions"]),
    }
