"""The file and folder names of a model checkpoint, in one place.

A checkpoint folder (a training step, a converted JAX checkpoint, or anything ``serve_policy.py`` loads)::

    <checkpoint>/model.safetensors                      the weights to serve (the EMA when training kept one)
    <checkpoint>/model_raw.safetensors                  training checkpoints with EMA: the raw (optimised) weights
    <checkpoint>/config.json                            the Pi0Config (written by the converter)
    <checkpoint>/assets/<asset_id>/norm_stats.json      normalisation statistics of the robot's data
    <checkpoint>/params/                                a JAX checkpoint: the orbax parameter tree (served by the
                                                        JAX model, converted for the PyTorch one)
    <checkpoint>/train_state/                           what a sharded training run resumes from (JAX: orbax;
                                                        PyTorch FSDP: every rank's shards)
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_FILE = "model.safetensors"
RAW_WEIGHTS_FILE = "model_raw.safetensors"
CONFIG_FILE = "config.json"
ASSETS_DIR = "assets"
NORM_STATS_FILE = "norm_stats.json"
JAX_PARAMS_DIR = "params"
TRAIN_STATE_DIR = "train_state"


def weights_path(path: str | os.PathLike, filename: str = WEIGHTS_FILE) -> Path:
    """``path`` itself if it is a file, else ``path/<filename>`` (default ``model.safetensors``)."""
    path = Path(path)
    return path / filename if path.is_dir() else path


def assets_dir(checkpoint_dir: str | os.PathLike) -> Path:
    """The folder of a checkpoint's assets (one sub-folder of norm stats per ``asset_id``)."""
    return Path(checkpoint_dir) / ASSETS_DIR


def norm_stats_path(directory: str | os.PathLike) -> Path:
    """The norm-stats file inside ``directory`` (e.g. ``assets_dir(checkpoint) / asset_id``)."""
    return Path(directory) / NORM_STATS_FILE


def is_jax_checkpoint(checkpoint_dir: str | os.PathLike) -> bool:
    """Whether ``checkpoint_dir`` holds an orbax parameter tree (``params/``) rather than safetensors weights."""
    return (Path(checkpoint_dir) / JAX_PARAMS_DIR / "_METADATA").is_file()


def check_checkpoint_dir(checkpoint_dir: str | os.PathLike, weights: str = WEIGHTS_FILE) -> None:
    """Refuses a folder that is not a checkpoint with what to give instead.

    Raises:
        FileNotFoundError: ``checkpoint_dir`` does not exist; it is an experiment folder (the hint lists its step
            folders); or it holds neither ``weights`` nor a JAX ``params/`` tree.
    """
    path = Path(checkpoint_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"Checkpoint folder {path} does not exist. Train one (README), or convert a published checkpoint "
            "(docs/converting.md)."
        )
    if (path / weights).is_file() or is_jax_checkpoint(path):
        return
    steps = sorted((int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
    if steps:
        shown = ", ".join(str(path / str(step)) for step in steps[:5])
        raise FileNotFoundError(
            f"{path} is an experiment folder, not a checkpoint: give one of its step folders, the latest first: {shown}"
        )
    if weights == RAW_WEIGHTS_FILE and (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"No {weights} in {path}: raw weights exist only in checkpoints trained with ema_decay; serve its "
            f"{WEIGHTS_FILE} (without raw_weights)."
        )
    raise FileNotFoundError(
        f"No {weights} (nor a JAX {JAX_PARAMS_DIR}/ tree) in checkpoint folder {path}. Convert a published checkpoint "
        "into it (docs/converting.md) or give a training step folder (checkpoints/<config>/<exp-name>/<step>)."
    )
