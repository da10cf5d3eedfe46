"""Model helpers shared by the tests."""

from __future__ import annotations

import torch

from openpi.models_pytorch.pi0_pytorch import PI0Pytorch


def randomized(model: PI0Pytorch, seed: int = 0, scale: float = 0.1) -> PI0Pytorch:
    """``model`` with every parameter drawn from N(0, scale²): a fresh model zero-initialises some layers (e.g. the
    image path is silent), which hides whether images, states or gradients reach where they should."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.data = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale
    return model
