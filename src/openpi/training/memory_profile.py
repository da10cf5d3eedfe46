"""Measured training memory on the CPU, the yardstick of ``openpi.training.memory``'s estimate: the most bytes of
tensors alive at once over real training steps, from ``torch.profiler``'s memory timeline (every CPU allocation and
free inside the steps, model building included; no code pages, thread stacks or allocator caching)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from openpi.models.observation import Observation
from openpi.training import config as _config
from openpi.training import memory, trainer


def run_steps(config: _config.TrainConfig, steps: int) -> None:
    """Builds ``config``'s model (seeded random weights) on the CPU and runs ``steps`` training steps on one synthetic
    batch as the trainer does (augmentation, forward, backward, clipping, AdamW)."""
    torch.manual_seed(0)
    model = trainer.build_model(config, torch.device("cpu"), load_pretrained=False).train()
    optimizer = config.optimizer.build([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    observation = memory.training_observation(config.model, config.batch_size)
    actions = torch.randn(config.batch_size, config.model.action_horizon, config.model.action_dim)
    for step in range(steps):
        train_step(model, optimizer, observation, actions, step)


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, observation: Observation, actions: torch.Tensor, step: int
) -> None:
    """One training step on fixed inputs exactly as the trainer runs it (augmentation, forward, backward, clipping,
    AdamW), at a fixed learning rate."""
    size = model.config.vision_config.image_size
    trainer.train_step(
        model,
        optimizer,
        observation,
        actions,
        lr=1e-5,
        clip_gradient_norm=1.0,
        image_resolution=(size, size),
        generator=trainer.augmentation_generator(0, step, 0),
    )


def tensor_peak_bytes(config: _config.TrainConfig, steps: int) -> int:
    """The most bytes of tensors alive at once over building ``config``'s model and ``steps`` training steps."""
    with torch.profiler.profile(profile_memory=True, record_shapes=True, with_stack=True) as profile:
        run_steps(config, steps)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        profile.export_memory_timeline(str(path), device="cpu")  # [times, [bytes per category at each time]]
        _, sizes = json.loads(path.read_text())
    return max(sum(by_category) for by_category in sizes)
