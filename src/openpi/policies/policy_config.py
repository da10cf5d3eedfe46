"""Building a :class:`~openpi.policies.policy.Policy` from a training config and a trained checkpoint."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from openpi.models import tokenizer
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.policies.data_config import DataConfig, DataConfigFactory
from openpi.policies.pipeline import StateRange, build_pipeline
from openpi.policies.policy import Policy
from openpi.policies.policy_model import PolicyModel
from openpi.shared import checkpoint_files, checkpoint_integrity
from openpi.shared import normalize as _normalize

logger = logging.getLogger(__name__)


class PolicyConfig(Protocol):
    """What the loader needs of a training config (``openpi.training.config.TrainConfig`` is one)."""

    name: str
    model: Pi0Config | Pi0FastConfig
    data: DataConfigFactory


def create_trained_policy(
    train_config: PolicyConfig,
    checkpoint_dir: str | os.PathLike,
    *,
    default_prompt: str | None = None,
    sample_kwargs: dict[str, Any] | None = None,
    pytorch_device: str | None = None,
    raw_weights: bool = False,
    batch_buckets: Sequence[int] | None = None,
    verify: bool = True,
    state_range: StateRange | None = None,
) -> Policy:
    """Loads ``checkpoint_dir/model.safetensors`` (the EMA weights when training kept one) into the PyTorch model, or
    a JAX checkpoint's ``checkpoint_dir/params`` (an orbax tree) into the JAX model, and the norm stats in
    ``checkpoint_dir/assets/<asset_id>/`` into a policy that accepts observations in the robot's format (e.g.
    LIBERO's ``observation/image``).

    Args:
        train_config: the config the checkpoint was trained with (model architecture and data pipeline).
        checkpoint_dir: a training checkpoint (``checkpoints/<config>/<exp>/<step>``) or converted model folder.
        default_prompt: prompt for observations without one.
        sample_kwargs: extra ``sample_actions`` arguments, e.g. ``{"num_steps": 10}``.
        pytorch_device: e.g. ``"cuda"``, ``"cpu"``; defaults to CUDA when available (the JAX model runs on JAX's
            default device).
        raw_weights: load ``model_raw.safetensors`` (the optimised weights of a checkpoint trained with an EMA)
            instead of the moving average.
        batch_buckets: batch sizes the model runs at (see :class:`Policy`); None runs each call's size.
        verify: refuse files that differ from the checkpoint's manifest (a checkpoint without one is served with a
            warning, unless its weights are truncated) and weights holding NaN or infinity.
        state_range: how far outside the training range a state is refused or logged (default
            :class:`StateRange`'s: refused beyond 10 times the range's span).

    Raises:
        FileNotFoundError: ``checkpoint_dir`` is missing or not a checkpoint (an experiment folder gets its steps).
        UnverifiedCheckpointError: with ``verify``, naming the damaged files or tensors.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_files.check_checkpoint_dir(
        checkpoint_dir, checkpoint_files.RAW_WEIGHTS_FILE if raw_weights else checkpoint_files.WEIGHTS_FILE
    )
    data_config = train_config.data.create(checkpoint_files.assets_dir(checkpoint_dir), train_config.model)
    tokenizer.resolve_tokenizer_path(data_config.tokenizer_path)  # a missing tokenizer stops the start, not the warm-up
    if checkpoint_files.is_jax_checkpoint(checkpoint_dir):
        if verify:
            _verify_files(checkpoint_dir, checkpoint_files.JAX_PARAMS_DIR)
        model, framework = _load_jax_model(train_config.model, checkpoint_dir, raw_weights, data_config), "jax"
    else:
        weights_name = checkpoint_files.RAW_WEIGHTS_FILE if raw_weights else checkpoint_files.WEIGHTS_FILE
        if verify:
            _verify_files(checkpoint_dir, weights_name)
        model = _load_pytorch_model(train_config.model, checkpoint_dir, raw_weights, pytorch_device, data_config)
        framework = "pytorch"
    if verify:
        _verify_finite(model, checkpoint_dir)
    norm_stats, source = _load_norm_stats(checkpoint_dir, data_config)
    logger.info("Loaded %s (config %s, %s)", checkpoint_dir, train_config.name, framework)

    pipeline = build_pipeline(
        data_config,
        norm_stats,
        from_dataset=False,
        default_prompt=default_prompt,
        norm_stats_source=source,
        state_range=StateRange() if state_range is None else state_range,
    )
    model_config = train_config.model
    metadata = {
        "config": train_config.name,
        "checkpoint": str(checkpoint_dir),
        "pi05": isinstance(model_config, Pi0Config) and model_config.pi05,
        "pi0_fast": isinstance(model_config, Pi0FastConfig),
        "action_horizon": model_config.action_horizon,
        "action_dim": data_config.robot_action_dim or model_config.action_dim,  # what the replies carry
        "model_action_dim": model_config.action_dim,
        "token_pruning_enabled": model_config.token_pruning_enabled,
        "rtc_modes": list(model_config.rtc.modes) if isinstance(model_config, Pi0Config) else [],
        "framework": framework,
    }
    return Policy(
        model,
        input_transforms=pipeline.inputs,
        output_transforms=pipeline.outputs,
        sample_kwargs=sample_kwargs,
        metadata=metadata,
        batch_buckets=batch_buckets,
        observation_keys=data_config.observation_keys,
    )


class UnverifiedCheckpointError(ValueError):
    """A checkpoint's files differ from its manifest, or its weights are truncated or hold NaN/infinity."""


def _verify_files(checkpoint_dir: Path, weights: str) -> None:
    """Checks the files serving reads (the weights, ``config.json``, the assets) against the checkpoint's manifest; a
    checkpoint without one gets a warning naming it, and only its weights' structure is checked."""

    def served(name: str) -> bool:
        top = Path(name).parts[0]
        return top in (weights, checkpoint_files.CONFIG_FILE, checkpoint_files.ASSETS_DIR)

    if checkpoint_integrity.has_manifest(checkpoint_dir):
        problems = checkpoint_integrity.manifest_problems(checkpoint_dir, include=served)
    else:
        logger.warning(
            "Checkpoint %s has no %s: its files cannot be verified against checksums (only the weights' structure is "
            "checked)",
            checkpoint_dir,
            checkpoint_integrity.MANIFEST_FILE,
        )
        present = [path for path in [checkpoint_dir / weights] if path.exists()]  # the loader names a missing one
        problems = checkpoint_integrity.structural_problems(present)
    if problems:
        raise UnverifiedCheckpointError(
            f"Refusing to serve {checkpoint_dir}: {'; '.join(problems)}. Restore the file, or pass --skip-verify to "
            "serve it anyway"
        )


def _verify_finite(model: PolicyModel, checkpoint_dir: Path) -> None:
    bad = model.nonfinite_parameters()
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UnverifiedCheckpointError(
            f"Refusing to serve {checkpoint_dir}: {len(bad)} weight tensor(s) hold NaN or infinite values ({shown}); "
            "pass --skip-verify to serve them anyway"
        )


def _load_pytorch_model(
    config: Pi0Config | Pi0FastConfig, checkpoint_dir: Path, raw_weights: bool, device: str | None, data: DataConfig
) -> PolicyModel:
    filename = checkpoint_files.RAW_WEIGHTS_FILE if raw_weights else checkpoint_files.WEIGHTS_FILE
    weights_file = checkpoint_files.weights_path(checkpoint_dir, filename)
    if not weights_file.is_file():
        hint = " (raw weights exist only in checkpoints trained with ema_decay)" if raw_weights else ""
        raise FileNotFoundError(
            f"No {filename} (nor a JAX {checkpoint_files.JAX_PARAMS_DIR}/ tree) in checkpoint folder {checkpoint_dir}"
            f"{hint}"
        )
    if isinstance(config, Pi0FastConfig):
        from openpi.policies import fast_pytorch_model

        if data.fast_tokenizer is None:
            raise ValueError("The data config of a π0-FAST model names no FAST tokenizer")
        return fast_pytorch_model.load(config, weights_file, device, data.fast_tokenizer)
    from openpi.policies import pytorch_model  # torch is imported only when a PyTorch checkpoint is served

    return pytorch_model.load(config, weights_file, device)


def _load_jax_model(
    config: Pi0Config | Pi0FastConfig, checkpoint_dir: Path, raw_weights: bool, data: DataConfig
) -> PolicyModel:
    if raw_weights:
        raise ValueError(f"{checkpoint_dir} is a JAX checkpoint: its params/ tree is the only weight set it holds")
    if isinstance(config, Pi0FastConfig):
        from openpi.policies import fast_jax_model

        if data.fast_tokenizer is None:
            raise ValueError("The data config of a π0-FAST model names no FAST tokenizer")
        return fast_jax_model.load(config, checkpoint_dir, data.fast_tokenizer)
    from openpi.policies import jax_model  # JAX is imported only when a JAX checkpoint is served

    return jax_model.load(config, checkpoint_dir)


def _load_norm_stats(checkpoint_dir: Path, data_config: DataConfig) -> tuple[dict[str, _normalize.NormStats], str]:
    """The checkpoint's norm stats for the data config's asset, and where they come from; failing that, when the
    checkpoint holds none at all, the ones the data config defines itself (e.g. identity stats). A checkpoint with
    another asset's stats was trained on other data and is refused: its own stats would be ignored."""
    assets = checkpoint_files.assets_dir(checkpoint_dir)
    if data_config.asset_id is not None:
        stats_dir = assets / data_config.asset_id
        stats_file = checkpoint_files.norm_stats_path(stats_dir)
        if stats_file.is_file():
            stats = _normalize.load(stats_dir)
            logger.info("Loaded norm stats from %s", stats_dir)
            return _require_state_and_actions(stats, stats_file), f"in {stats_file}"
    trained_on = sorted(str(path.parent.relative_to(assets)) for path in assets.rglob(checkpoint_files.NORM_STATS_FILE))
    if trained_on:
        raise ValueError(
            f"Checkpoint {checkpoint_dir} has norm stats for {trained_on}, not for this data config's asset "
            f"{data_config.asset_id!r}: it was trained on other data (for the shapes scene: another dataset spec, "
            "e.g. object count or action space); load it with the data config it was trained with"
        )
    if data_config.norm_stats is not None:
        logger.warning("No norm stats in checkpoint %s; using the data config's own", checkpoint_dir)
        return _require_state_and_actions(data_config.norm_stats, "the data config"), "of the data config"
    expected = checkpoint_files.norm_stats_path(checkpoint_files.assets_dir(checkpoint_dir) / str(data_config.asset_id))
    raise FileNotFoundError(f"No norm stats for checkpoint {checkpoint_dir}: expected {expected}")


def _require_state_and_actions(
    stats: dict[str, _normalize.NormStats], source: object
) -> dict[str, _normalize.NormStats]:
    missing = {"state", "actions"} - set(stats)
    if missing:
        raise ValueError(f"Norm stats from {source} lack {sorted(missing)}; have {sorted(stats)}")
    return stats
