"""Training checkpoints: atomic save, discovery of the latest complete one, restore, and pruning of old ones.

Layout of an experiment directory (``checkpoints/<config>/<exp>/``)::

    <step>/model.safetensors          weights after ``step`` optimizer steps (their moving average with ema_decay)
    <step>/model_raw.safetensors      with ema_decay only: the weights themselves, what training resumes from
    <step>/optimizer.pt               optimizer state dict
    <step>/train_state/               instead of optimizer.pt, with FSDP: every rank's shards of the weights,
                                      optimizer state and EMA (what a sharded run resumes from)
    <step>/training_state.pt          step, learning-rate schedule state and every rank's RNG states
    <step>/assets/<asset_id>/norm_stats.json
    <step>/MANIFEST.sha256.json       sha256 of every file above, written before the marker
    <step>/CHECKPOINT_COMPLETE        written last; a step directory without it is ignored

A checkpoint is written into a hidden temporary directory, every file is fsynced, the completeness marker is added,
and only then is the directory renamed to ``<step>``. A crash at any point leaves either no ``<step>`` directory or
a complete one; leftovers of interrupted saves are removed by :func:`remove_incomplete`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from openpi.models_pytorch import weights
from openpi.shared import checkpoint_integrity, normalize
from openpi.shared.checkpoint_files import JAX_PARAMS_DIR, RAW_WEIGHTS_FILE, TRAIN_STATE_DIR, WEIGHTS_FILE
from openpi.training.ema import ExponentialMovingAverage

COMPLETE_MARKER = "CHECKPOINT_COMPLETE"
OPTIMIZER_FILENAME = "optimizer.pt"
TRAINING_STATE_FILENAME = "training_state.pt"
_TMP_PREFIX = ".tmp_"
_TRASH_PREFIX = ".trash_"

logger = logging.getLogger(__name__)

RngState = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """What a checkpoint holds besides the weights and the optimizer: the step and per-rank RNG states."""

    step: int
    rng_states: list[RngState]
    scheduler: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Per rank, the losses of the steps since the last log step: the first log after a resume averages the same
    # window an uninterrupted run would.
    loss_windows: list[list[float]] = dataclasses.field(default_factory=list)
    # Per rank, a mixture's [dataset, loss] of every sample since the last log step (its train/loss/<dataset>).
    dataset_loss_windows: list[list[list[float]]] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> RngState:
    """The current python, numpy, torch (CPU) and CUDA RNG states, as tensors and plain values (no pickled objects)."""
    np_state = np.random.get_state(legacy=False)
    state: RngState = {
        "python": _python_state_to_plain(random.getstate()),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: RngState) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are restored only when CUDA is available."""
    random.setstate(_python_state_from_plain(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> dict[str, Any]:
    version, internal, gauss_next = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def _python_state_from_plain(state: dict[str, Any]) -> tuple:
    return state["version"], tuple(int(x) for x in state["internal"].tolist()), state["gauss_next"]


# ---------------------------------------------------------------------------------------------- discovery
def step_dir(exp_dir: str | Path, step: int) -> Path:
    return Path(exp_dir) / str(step)


def is_complete(directory: str | Path) -> bool:
    """True when ``directory`` is a step directory whose save finished."""
    directory = Path(directory)
    return directory.name.isdigit() and (directory / COMPLETE_MARKER).is_file()


def complete_steps(exp_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints in ``exp_dir``, ascending (empty when the directory does not exist)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    return sorted(int(d.name) for d in exp_dir.iterdir() if d.is_dir() and is_complete(d))


def latest_complete_step(exp_dir: str | Path) -> int | None:
    """The highest step with a complete checkpoint, or None."""
    steps = complete_steps(exp_dir)
    return steps[-1] if steps else None


# ------------------------------------------------------------------------------------------------- saving
def save_checkpoint(
    exp_dir: str | Path,
    state: TrainingState,
    model: nn.Module | Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
    norm_stats: tuple[str, Mapping[str, normalize.NormStats]] | None = None,
    *,
    ema: ExponentialMovingAverage | None = None,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Writes a complete checkpoint for ``state.step`` atomically and returns its directory.

    Args:
        exp_dir: the experiment directory; the checkpoint goes to ``exp_dir/<step>``.
        state: step, scheduler state and the RNG states of every rank.
        model: the (unwrapped) model whose weights are saved, or its (gathered) state dict.
        optimizer: its optimizer, or its (gathered) state dict.
        norm_stats: ``(asset_id, stats)`` written to ``assets/<asset_id>/norm_stats.json``, or None.
        ema: the moving average of the weights, saved as ``model.safetensors`` (the model's own weights then go to
            ``model_raw.safetensors``).
        before_commit: called with the temporary directory after the files are written and before the marker and
            the rename (lets tests simulate a crash there).
    """

    def write(directory: Path) -> None:
        if ema is None:
            weights.save_weights(model, directory)
        else:
            weights.save_weights(ema.state_dict(), directory)
            weights.save_weights(model, directory, RAW_WEIGHTS_FILE)
        optimizer_state = optimizer if isinstance(optimizer, Mapping) else optimizer.state_dict()
        torch.save(dict(optimizer_state), directory / OPTIMIZER_FILENAME)
        write_training_files(directory, state, norm_stats)
        if before_commit is not None:
            before_commit(directory)

    return write_atomically(exp_dir, state.step, write)


def write_training_files(
    directory: Path, state: TrainingState, norm_stats: tuple[str, Mapping[str, normalize.NormStats]] | None
) -> None:
    """The files every checkpoint has besides its weights and optimizer state: the training state, the norm stats."""
    torch.save(dataclasses.asdict(state), directory / TRAINING_STATE_FILENAME)
    save_norm_stats(directory, norm_stats)


def save_norm_stats(directory: Path, norm_stats: tuple[str, Mapping[str, normalize.NormStats]] | None) -> None:
    """Writes ``(asset_id, stats)`` to ``directory/assets/<asset_id>/norm_stats.json`` (nothing for None)."""
    if norm_stats is not None:
        asset_id, stats = norm_stats
        normalize.save(directory / "assets" / asset_id, dict(stats))


def write_atomically(exp_dir: str | Path, step: int, write: Callable[[Path], None]) -> Path:
    """Runs ``write(tmp_dir)`` in a hidden temporary directory, then commits it as ``exp_dir/<step>``
    (:func:`commit`); returns that directory. Any framework's files commit this way."""
    tmp_dir = new_temporary_dir(exp_dir, step)
    try:
        write(tmp_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return commit(tmp_dir, exp_dir, step)


def new_temporary_dir(exp_dir: str | Path, step: int) -> Path:
    """A new, empty hidden directory in which checkpoint ``step`` is written before :func:`commit` (several
    processes may write into it; leftovers are removed by :func:`remove_incomplete`)."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = exp_dir / f"{_TMP_PREFIX}{step}_{os.getpid()}"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir()
    return tmp_dir


def commit(tmp_dir: Path, exp_dir: str | Path, step: int) -> Path:
    """Adds the manifest and the completeness marker to the written ``tmp_dir``, fsyncs it and renames it to
    ``exp_dir/<step>`` (replacing an older one); returns that directory. A failure removes ``tmp_dir``."""
    exp_dir = Path(exp_dir)
    try:
        checkpoint_integrity.write_manifest(tmp_dir)
        _fsync_tree(tmp_dir)
        (tmp_dir / COMPLETE_MARKER).write_text(f"{step}\n")
        _fsync_path(tmp_dir / COMPLETE_MARKER)
        _fsync_path(tmp_dir)
        final_dir = step_dir(exp_dir, step)
        if final_dir.exists():
            _remove_dir(final_dir)
        os.replace(tmp_dir, final_dir)
        _fsync_path(exp_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info("Saved checkpoint %s", final_dir)
    return final_dir


def remove_incomplete(exp_dir: str | Path) -> list[Path]:
    """Deletes leftovers of interrupted saves/deletions and step directories without the marker; returns them."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    stale = [
        d
        for d in exp_dir.iterdir()
        if d.is_dir() and (d.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) or (d.name.isdigit() and not is_complete(d)))
    ]
    for directory in stale:
        logger.warning("Removing incomplete checkpoint directory %s", directory)
        shutil.rmtree(directory, ignore_errors=True)
    return stale


def prune_checkpoints(exp_dir: str | Path, keep_period: int | None) -> list[int]:
    """Deletes complete checkpoints except the latest two (the newest and a fallback should it turn out damaged) and
    those whose step is divisible by ``keep_period``. Returns the deleted steps.
    """
    steps = complete_steps(exp_dir)
    doomed = [s for s in steps[:-2] if keep_period is None or s % keep_period != 0]
    for step in doomed:
        _remove_dir(step_dir(exp_dir, step))
    return doomed


# ------------------------------------------------------------------------------------------------ integrity
def verify_checkpoint(checkpoint_dir: str | Path) -> list[str]:
    """What keeps a complete checkpoint from being resumed, each file named (empty when intact): against its manifest,
    files missing or altered; without one (copied without it, or written before manifests), the files a resume reads
    missing, or weights and state files whose structure is damaged (truncated, a failing CRC)."""
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_integrity.has_manifest(checkpoint_dir):
        return checkpoint_integrity.manifest_problems(checkpoint_dir)
    missing = [f"{checkpoint_dir / name} is missing" for name in _missing_resume_files(checkpoint_dir)]
    return missing + checkpoint_integrity.structural_problems(sorted(checkpoint_dir.rglob("*")))


def _missing_resume_files(checkpoint_dir: Path) -> list[str]:
    """The files a resume reads that ``checkpoint_dir`` lacks: a JAX checkpoint's two orbax trees, or a PyTorch
    checkpoint's weights, training state and optimizer state (``optimizer.pt``, or the shards in ``train_state/``)."""
    if (checkpoint_dir / JAX_PARAMS_DIR).is_dir():
        return [name for name in (JAX_PARAMS_DIR, TRAIN_STATE_DIR) if not (checkpoint_dir / name).is_dir()]
    missing = [name for name in (WEIGHTS_FILE, TRAINING_STATE_FILENAME) if not (checkpoint_dir / name).is_file()]
    if not (checkpoint_dir / OPTIMIZER_FILENAME).is_file() and not (checkpoint_dir / TRAIN_STATE_DIR).is_dir():
        missing.append(OPTIMIZER_FILENAME)
    return missing


def latest_verified_step(exp_dir: str | Path) -> int | None:
    """The newest complete checkpoint that :func:`verify_checkpoint` finds intact; damaged newer ones are named in a
    warning, and so is a checkpoint without a manifest (only its structure could be checked)."""
    for step in reversed(complete_steps(exp_dir)):
        directory = step_dir(exp_dir, step)
        problems = verify_checkpoint(directory)
        if not problems:
            if not checkpoint_integrity.has_manifest(directory):
                logger.warning("Checkpoint %s has no manifest: only its files' structure was checked", directory)
            return step
        logger.warning("Checkpoint %s is damaged (%s); falling back to an earlier one", directory, "; ".join(problems))
    return None


# ------------------------------------------------------------------------------------------------ loading
def load_checkpoint(
    checkpoint_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema: ExponentialMovingAverage | None = None,
) -> TrainingState:
    """Loads the training weights (and the optimizer state, and the weights' moving average) from a complete
    checkpoint directory and returns its training state.

    The model gets ``model_raw.safetensors`` when the checkpoint has one (it was trained with an EMA), else
    ``model.safetensors``; ``ema`` gets ``model.safetensors`` when the checkpoint has an EMA, else starts from the
    loaded weights. RNG states are returned, not applied; see :func:`restore_rng_state`.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not is_complete(checkpoint_dir):
        raise FileNotFoundError(f"{checkpoint_dir} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    has_ema = (checkpoint_dir / RAW_WEIGHTS_FILE).is_file()
    weights.load_weights(model, checkpoint_dir, RAW_WEIGHTS_FILE if has_ema else WEIGHTS_FILE)
    if ema is not None and has_ema:
        ema.load_state_dict(safetensors.torch.load_file(checkpoint_dir / WEIGHTS_FILE, device=str(_device_of(model))))
    elif ema is not None:
        logger.warning("%s has no moving average of the weights; the EMA starts from its weights", checkpoint_dir)
        ema.load_state_dict({key: value.float() for key, value in model.state_dict().items()})
    if optimizer is not None:
        optimizer.load_state_dict(_load_tensors(checkpoint_dir / OPTIMIZER_FILENAME))
    return load_training_state(checkpoint_dir)


def load_training_state(checkpoint_dir: str | Path) -> TrainingState:
    """The step, schedule state, RNG states and loss windows a checkpoint records."""
    return TrainingState(**_load_tensors(Path(checkpoint_dir) / TRAINING_STATE_FILENAME))


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _load_tensors(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------- filesystem
def _remove_dir(directory: Path) -> None:
    """Renames ``directory`` out of the step namespace first, so a crash mid-deletion leaves no partial step dir."""
    trash = directory.with_name(f"{_TRASH_PREFIX}{directory.name}_{os.getpid()}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        _fsync_path(path)


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
