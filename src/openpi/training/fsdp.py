"""Fully sharded data parallel training (PyTorch FSDP2) for models whose weights and optimizer state do not fit one
device: ``--fsdp-devices N`` under ``torchrun``.

Every transformer layer (SigLIP's, the language model's and the action expert's) is its own ``fully_shard`` unit and
the model the root unit, over a ``replicate × shard`` device mesh (N ranks shard each unit; the world size divided
by N replicate it: N = world size is plain FSDP). π0's joint attention calls a decoder layer through
``attention_inputs`` and ``feed_forward`` rather than ``forward``, so those two methods are registered to gather the
layer's parameters. An EMA of the weights is sharded like them. Checkpoints are sharded on disk: every rank writes its
shards of the weights, optimizer state and EMA (``train_state/``, torch.distributed.checkpoint) and a run resumes
from them with the same ``fsdp_devices``; the serving weights are gathered one tensor at a time into the usual
``model.safetensors``, so a step folder serves and converts as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from openpi.models_pytorch.gemma import GemmaDecoderLayer
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.safetensors_stream import SafetensorsStreamWriter
from openpi.shared.checkpoint_files import RAW_WEIGHTS_FILE, TRAIN_STATE_DIR, WEIGHTS_FILE
from openpi.training.ema import ExponentialMovingAverage

_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.bfloat16: np.dtype(ml_dtypes.bfloat16)}


def _layers(model: PI0Pytorch) -> Iterator[nn.Module]:
    pwe = model.paligemma_with_expert
    yield from pwe.paligemma.model.vision_tower.vision_model.encoder.layers
    yield from pwe.paligemma.model.language_model.layers
    yield from pwe.gemma_expert.model.layers


def shard_model(model: PI0Pytorch, world_size: int, fsdp_devices: int, device: torch.device) -> None:
    """Shards ``model`` in place: one FSDP unit per transformer layer, the model the root."""
    if fsdp_devices < 2 or world_size % fsdp_devices:
        raise ValueError(f"fsdp_devices={fsdp_devices} must be >= 2 and divide the {world_size} processes")
    if world_size == fsdp_devices:
        mesh = init_device_mesh(device.type, (world_size,))
    else:
        mesh = init_device_mesh(
            device.type, (world_size // fsdp_devices, fsdp_devices), mesh_dim_names=("replicate", "shard")
        )
    for layer in _layers(model):
        fully_shard(layer, mesh=mesh)
        if isinstance(layer, GemmaDecoderLayer):
            register_fsdp_forward_method(layer, "attention_inputs")
            register_fsdp_forward_method(layer, "feed_forward")
    fully_shard(model, mesh=mesh)


def save_sharded(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: ExponentialMovingAverage | None
) -> None:
    """Writes a checkpoint's files from every rank (a collective): each rank's shards of the weights, optimizer state
    and EMA into ``directory/train_state`` (torch.distributed.checkpoint), and the serving weights, gathered one
    tensor at a time and streamed by rank 0, into ``model.safetensors`` (the EMA when there is one; then the weights
    themselves into ``model_raw.safetensors``)."""
    dcp.save(_sharded_state(model, optimizer, ema), checkpoint_id=directory / TRAIN_STATE_DIR)
    weights = get_model_state_dict(model)
    _stream_full_tensors(directory / WEIGHTS_FILE, weights if ema is None else ema.state_dict())
    if ema is not None:
        _stream_full_tensors(directory / RAW_WEIGHTS_FILE, weights)


def load_sharded(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: ExponentialMovingAverage | None
) -> None:
    """Loads each rank's shards of a :func:`save_sharded` checkpoint into the sharded model, optimizer and EMA (a
    checkpoint without an EMA starts the average from its weights)."""
    has_ema = (directory / RAW_WEIGHTS_FILE).is_file()
    state = _sharded_state(model, optimizer, ema if has_ema else None)
    optimizer_state = {"optimizer": state.pop("optimizer")}
    dcp.load(state, checkpoint_id=directory / TRAIN_STATE_DIR)  # strict: every weight and EMA shard
    # Parameters that never received a gradient (π0.5's last language-model layer) have no saved AdamW state; the
    # fresh optimizer's zero state stands for them.
    partial = DefaultLoadPlanner(allow_partial_load=True)
    dcp.load(optimizer_state, checkpoint_id=directory / TRAIN_STATE_DIR, planner=partial)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, optimizer_state["optimizer"])
    if ema is not None and not has_ema:  # shard by shard: the average has the weights' placements
        with torch.no_grad():
            for key, value in model.state_dict().items():
                ema.shadow[key].copy_(value.detach().float())


def _sharded_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema: ExponentialMovingAverage | None
) -> dict[str, Any]:
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        state["ema"] = ema.shadow  # loaded in place
    return state


def _stream_full_tensors(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Rank 0 writes the full value of every (sharded) tensor of ``state`` to the safetensors file ``path``; every
    rank gathers each tensor in turn, so no device or host holds more than one full tensor at a time."""
    is_main = not dist.is_initialized() or dist.get_rank() == 0
    entries = [(key, tuple(value.shape), _NUMPY_DTYPES[value.dtype]) for key, value in state.items()]
    writer = SafetensorsStreamWriter(path, entries, {"format": "pt"}) if is_main else None
    try:
        for key, value in state.items():
            full = local_value(value).detach()
            if writer is not None:
                writer.write(key, _as_numpy(full.cpu()))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor (the full value of a DTensor, e.g. a sharded gradient norm)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
