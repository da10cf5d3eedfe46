"""Building a :class:`~openpi.policies.policy.Policy` from a training config and a trained checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openpi import transforms as _transforms
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies.policy import Policy
from openpi.shared import normalize as _normalize
from openpi.training import config as _config

logger = logging.getLogger(__name__)

ASSETS_DIR = "assets"


@dataclasses.dataclass(frozen=True)
class CheckStateDim:
    """Rejects a robot state whose size differs from the norm stats' (which the model was trained with)."""

    dim: int

    def __call__(self, data: dict) -> dict:
        state = np.asarray(data["state"])
        if state.ndim != 1 or state.shape[0] != self.dim:
            raise ValueError(f"'state' must be a vector of {self.dim} values (robot format), got shape {state.shape}")
        return data


def create_trained_policy(
    train_config: _config.TrainConfig,
    checkpoint_dir: str | os.PathLike,
    *,
    default_prompt: str | None = None,
    sample_kwargs: dict[str, Any] | None = None,
    pytorch_device: str | None = None,
) -> Policy:
    """Loads ``checkpoint_dir/model.safetensors`` and the norm stats in ``checkpoint_dir/assets/<asset_id>/`` into a
    policy that accepts observations in the robot's format (e.g. LIBERO's ``observation/image``).

    Args:
        train_config: the config the checkpoint was trained with (model architecture and data pipeline).
        checkpoint_dir: a training checkpoint (``checkpoints/<config>/<exp>/<step>``) or converted model folder.
        default_prompt: prompt for observations without one.
        sample_kwargs: extra ``sample_actions`` arguments, e.g. ``{"num_steps": 10}``.
        pytorch_device: e.g. ``"cuda"``, ``"cpu"``; defaults to CUDA when available.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not weights.weights_path(checkpoint_dir).is_file():
        raise FileNotFoundError(f"No {weights.WEIGHTS_FILE} in checkpoint folder {checkpoint_dir}")
    device = pytorch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    data_config = train_config.data.create(checkpoint_dir / ASSETS_DIR, train_config.model)
    norm_stats = _load_norm_stats(checkpoint_dir, data_config)

    model = PI0Pytorch(train_config.model)
    weights.load_weights(model, checkpoint_dir)
    logger.info("Loaded %s (config %s) on %s", weights.weights_path(checkpoint_dir), train_config.name, device)

    quantiles = data_config.use_quantile_norm
    input_transforms = [
        _transforms.InjectDefaultPrompt(default_prompt),
        *data_config.data_transforms.inputs,
        CheckStateDim(len(norm_stats["state"].mean)),
        _transforms.Normalize(norm_stats, quantiles),
        *data_config.model_transforms.inputs,
    ]
    output_transforms = [
        *data_config.model_transforms.outputs,
        _transforms.Unnormalize(norm_stats, quantiles),
        *data_config.data_transforms.outputs,
    ]
    model_config = train_config.model
    metadata = {
        "config": train_config.name,
        "checkpoint": str(checkpoint_dir),
        "pi05": model_config.pi05,
        "action_horizon": model_config.action_horizon,
        "action_dim": model_config.action_dim,
        "token_pruning_enabled": model_config.token_pruning_enabled,
    }
    return Policy(
        model,
        input_transforms=input_transforms,
        output_transforms=output_transforms,
        sample_kwargs=sample_kwargs,
        metadata=metadata,
        pytorch_device=device,
    )


def _load_norm_stats(checkpoint_dir: Path, data_config: _config.DataConfig) -> dict[str, _normalize.NormStats]:
    """The checkpoint's norm stats; failing that, the ones the data config defines itself (e.g. identity stats)."""
    if data_config.asset_id is not None:
        stats_dir = checkpoint_dir / ASSETS_DIR / data_config.asset_id
        if (stats_dir / _normalize.NORM_STATS_FILENAME).is_file():
            stats = _normalize.load(stats_dir)
            logger.info("Loaded norm stats from %s", stats_dir)
            return _require_state_and_actions(stats, stats_dir)
    if data_config.norm_stats is not None:
        logger.warning("No norm stats in checkpoint %s; using the data config's own", checkpoint_dir)
        return _require_state_and_actions(data_config.norm_stats, "the data config")
    expected = checkpoint_dir / ASSETS_DIR / str(data_config.asset_id) / _normalize.NORM_STATS_FILENAME
    raise FileNotFoundError(f"No norm stats for checkpoint {checkpoint_dir}: expected {expected}")


def _require_state_and_actions(
    stats: dict[str, _normalize.NormStats], source: object
) -> dict[str, _normalize.NormStats]:
    missing = {"state", "actions"} - set(stats)
    if missing:
        raise ValueError(f"Norm stats from {source} lack {sorted(missing)}; have {sorted(stats)}")
    return stats
