"""Validation loss on held-out episodes, for both trainers (the PyTorch forward is here, the JAX one in
``jax_trainer``).

Every validation runs the same global batches of held-out frames (``data_loader.create_validation_loader``) with the
same flow noise, times and pruner draws: each frame's are drawn from the seed and its place in the fixed set, so the
curve is comparable step to step, and a rank draws its share alone (the numbers do not depend on the process count).

- ``val/loss``: the flow-matching MSE of the training-mode forward (a pruned model: its noisy straight-through
  selection, at the noise of the step just trained); ``val/loss_horizon/<k>``: the same per action-horizon step.
- With pruning, ``val/loss_served``: the same batches through the eval-mode forward at the serving budget (hard
  selection, the dropped patches removed from the prefix), and ``val/served_gap = val/loss_served - val/loss``.
- A mixture adds ``val/loss/<dataset>`` (and ``val/loss_served/<dataset>``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from openpi.models.observation import Observation
from openpi.models_pytorch import preprocessing
from openpi.training import config as _config
from openpi.training.data_loader import DataLoader

# Mixed into the seed so that the validation draws are independent of every training stream.
_DRAWS_STREAM = 0x7A2
PREFIX = "val/"


def interval(config: _config.TrainConfig) -> int:
    """Optimizer steps between validations: ``val_interval``, else ``save_interval``."""
    return config.save_interval if config.val_interval is None else config.val_interval


def is_validation_step(config: _config.TrainConfig, completed: int) -> bool:
    """Whether to validate after ``completed`` optimizer steps (every interval, and after the last)."""
    return completed % interval(config) == 0 or completed == config.num_train_steps


@dataclasses.dataclass(frozen=True)
class Draws:
    """The random inputs of one validation batch's loss, numpy float32."""

    noise: np.ndarray  # [b, H, A] the flow's starting point
    time: np.ndarray  # [b] Beta(1.5, 1) * 0.999 + 0.001, as in training
    prune_uniform: np.ndarray | None  # [b, N, N] the training-mode pruner's draw (None without pruning)


def sample_positions(step: int, global_batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """``[b]`` the places in the fixed validation set of rank ``rank``'s samples of validation batch ``step``."""
    per_rank = global_batch_size // world_size
    return step * global_batch_size + rank * per_rank + np.arange(per_rank)


def draws(seed: int, positions: np.ndarray, shape: tuple[int, int], num_patches: int | None) -> Draws:
    """The draws of the samples at ``positions`` (``shape``: horizon, action dim; ``num_patches``: N, or None
    without pruning): each sample's from ``(seed, position)`` alone."""
    rngs = [np.random.default_rng([seed, _DRAWS_STREAM, int(p)]) for p in positions]
    noise = np.stack([rng.standard_normal(shape) for rng in rngs]).astype(np.float32)
    time = (np.array([rng.beta(1.5, 1.0) for rng in rngs]) * 0.999 + 0.001).astype(np.float32)
    uniform = None
    if num_patches is not None:
        uniform = np.stack([rng.random((num_patches, num_patches), dtype=np.float32) for rng in rngs])
    return Draws(noise, time, uniform)


class Totals:
    """Sums of the per-element validation losses: per horizon step, and per dataset in training and eval mode, with
    the sample counts. ``values`` is one float64 vector, so that ranks add theirs with one all-reduce."""

    def __init__(self, horizon: int, action_dim: int, num_sources: int) -> None:
        self.horizon, self.action_dim, self.num_sources = horizon, action_dim, num_sources
        self.values = np.zeros(horizon + 3 * num_sources)

    def _parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Views: per horizon step [H], per dataset [M] (training mode), per dataset [M] (served), counts [M]."""
        h, m = self.horizon, self.num_sources
        return self.values[:h], self.values[h : h + m], self.values[h + m : h + 2 * m], self.values[h + 2 * m :]

    def add(self, losses: np.ndarray, sources: np.ndarray, served: np.ndarray | None = None) -> None:
        """Adds a batch: ``losses [b, H, A]`` of the training-mode forward, ``served [b, H, A]`` of the eval-mode
        one, ``sources [b]`` each sample's dataset."""
        by_step, by_source, served_by_source, counts = self._parts()
        losses = losses.astype(np.float64)
        by_step += losses.sum(axis=(0, 2))
        np.add.at(by_source, sources, losses.sum(axis=(1, 2)))
        np.add.at(counts, sources, 1.0)
        if served is not None:
            np.add.at(served_by_source, sources, served.astype(np.float64).sum(axis=(1, 2)))

    def metrics(self, names: tuple[str, ...], served: bool) -> dict[str, float]:
        """The ``val/*`` metrics (``names``: a mixture's datasets, empty otherwise; ``served``: a pruned model's)."""
        by_step, by_source, served_by_source, counts = self._parts()
        per_sample = self.horizon * self.action_dim
        loss = by_step.sum() / (counts.sum() * per_sample)
        metrics = {f"{PREFIX}loss": loss}
        metrics |= {f"{PREFIX}loss_horizon/{k}": v / (counts.sum() * self.action_dim) for k, v in enumerate(by_step)}
        if served:
            served_loss = served_by_source.sum() / (counts.sum() * per_sample)
            metrics |= {f"{PREFIX}loss_served": served_loss, f"{PREFIX}served_gap": served_loss - loss}
        for name, total, served_total, count in zip(names, by_source, served_by_source, counts, strict=False):
            if count:
                metrics[f"{PREFIX}loss/{name}"] = total / (count * per_sample)
                if served:
                    metrics[f"{PREFIX}loss_served/{name}"] = served_total / (count * per_sample)
        return {key: float(value) for key, value in metrics.items()}


@torch.no_grad()
def pytorch_totals(
    model: torch.nn.Module,
    loader: DataLoader,
    config: _config.TrainConfig,
    *,
    noise_scale: float,
    device: torch.device,
    rank: int,
    world_size: int,
) -> Totals:
    """This rank's :class:`Totals` of the validation batches: every batch through the training-mode forward (the
    pruner at ``noise_scale`` with the fixed draw) and, with pruning, the eval-mode one. The model's mode, the
    pruner's settings and every RNG stream are as before afterwards."""
    model_config = config.model
    pruned = model_config.token_pruning_enabled
    size = model_config.vision_config.image_size
    totals = Totals(model_config.action_horizon, model_config.action_dim, max(1, len(loader.source_names)))
    was_training = model.training
    pruner_state = (model.pruner.noise_scale, model.pruner.collect_stats) if pruned else None
    if pruned:
        model.pruner.noise_scale, model.pruner.collect_stats = noise_scale, False
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for step, (observation, actions) in enumerate(loader):
                positions = sample_positions(step, config.batch_size, rank, world_size)
                drawn = draws(config.seed, positions, tuple(actions.shape[1:]), _num_patches(config, observation))
                observation = preprocessing.preprocess_observation(
                    observation.to(device), train=False, image_resolution=(size, size)
                )
                inputs = (observation, actions.to(device), *_tensors(drawn, device))
                sources = loader.batch_sources(step) if loader.source_names else np.zeros(len(positions), np.int64)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=_autocast(config)):
                    model.train()
                    losses = model(*inputs)
                    model.eval()
                    served = model(*inputs[:4]) if pruned else None
                totals.add(_numpy(losses), sources, None if served is None else _numpy(served))
    finally:
        model.train(was_training)
        if pruner_state is not None:
            model.pruner.noise_scale, model.pruner.collect_stats = pruner_state
    return totals


def _num_patches(config: _config.TrainConfig, observation: Observation) -> int | None:
    """N of the pruner's draw: every camera slot's patches (None without pruning)."""
    if not config.model.token_pruning_enabled:
        return None
    return len(observation.images) * config.model.vision_config.num_patches


def _tensors(drawn: Draws, device: torch.device) -> list[torch.Tensor | None]:
    uniform = None if drawn.prune_uniform is None else torch.from_numpy(drawn.prune_uniform).to(device)
    return [torch.from_numpy(drawn.noise).to(device), torch.from_numpy(drawn.time).to(device), uniform]


def _autocast(config: _config.TrainConfig) -> bool:
    return config.pytorch_training_precision == "mixed"


def _numpy(losses: torch.Tensor) -> np.ndarray:
    return losses.float().cpu().numpy()
