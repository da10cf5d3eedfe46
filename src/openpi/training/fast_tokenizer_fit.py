"""Fitting a FAST tokenizer on a dataset's action chunks (``scripts/train_fast_tokenizer.py``).

Chunks come from a config's pipeline up to the robot mapping (as for the norm stats), normalised with its quantile
statistics (q01 → -1, q99 → 1, as π0-FAST trains on them); a held-out share measures the round-trip error.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from openpi.models.fast_tokenizer import DEFAULT_SCALE, FastActionTokenizer, RoundTripError
from openpi.policies.pipeline import build_pipeline
from openpi.shared import normalize
from openpi.training import config as _config
from openpi.training import data_loader

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FitReport:
    train_chunks: int
    held_out_chunks: int
    vocab_size: int
    held_out: RoundTripError


def fit_and_report(
    chunks: np.ndarray, vocab_size: int = 1024, scale: float = DEFAULT_SCALE, held_out_fraction: float = 0.1, seed=0
) -> tuple[FastActionTokenizer, FitReport]:
    """Fits on a random ``1 - held_out_fraction`` of chunks ``[N, H, D]`` and measures the rest."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    order = np.random.default_rng(seed).permutation(len(chunks))
    num_held_out = max(1, round(held_out_fraction * len(chunks)))
    if num_held_out >= len(chunks):
        raise ValueError(f"{len(chunks)} chunks are too few to hold {num_held_out} out")
    held_out, train = chunks[order[:num_held_out]], chunks[order[num_held_out:]]
    fast = FastActionTokenizer.fit(train, vocab_size=vocab_size, scale=scale)
    return fast, FitReport(len(train), len(held_out), fast.vocab_size, fast.round_trip_error(held_out))


def dataset_chunks(config: _config.TrainConfig, max_chunks: int | None = None) -> np.ndarray:
    """Quantile-normalised action chunks ``[N, action_horizon, D]`` of ``config``'s dataset (a random subset when
    ``max_chunks`` is set); needs the config's norm stats."""
    config.data.prepare()
    data_config = config.data.create(config.assets_dirs, config.model)
    if data_config.norm_stats is None or not data_config.norm_stats["actions"].has_quantiles:
        raise ValueError(f"Config {config.name!r} has no action quantiles: run scripts/compute_norm_stats.py first")
    dataset = data_loader.create_torch_dataset(data_config, config.model.action_horizon, config.model)
    robot_steps = build_pipeline(data_config, None, from_dataset=True, stage="robot").inputs
    dataset = data_loader.TransformedDataset(dataset, [*robot_steps, lambda s: np.asarray(s["actions"], np.float32)])
    count = len(dataset) if max_chunks is None else min(max_chunks, len(dataset))
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:count].tolist()
    actions = np.stack([dataset[i] for i in indices])
    normalized = normalize.normalize(actions, data_config.norm_stats["actions"], use_quantiles=True)
    return np.clip(normalized, -1.0, 1.0)


def main(
    config_name: str,
    output_dir: Path,
    vocab_size: int = 1024,
    scale: float = DEFAULT_SCALE,
    max_chunks: int | None = 20_000,
    held_out_fraction: float = 0.1,
) -> FitReport:
    """Fits a FAST tokenizer on ``config_name``'s action chunks, writes its folder to ``output_dir``, reports."""
    chunks = dataset_chunks(_config.get_config(config_name), max_chunks)
    fast, report = fit_and_report(chunks, vocab_size, scale, held_out_fraction)
    fast.save(output_dir)
    logger.info("Wrote %s: %s", output_dir, report)
    return report
