"""Fully sharded data parallel training (PyTorch FSDP2) for models whose weights and optimizer state do not fit one
device: ``--fsdp-devices N`` under ``torchrun``.

Every transformer layer (SigLIP's, the language model's and the action expert's) is its own ``fully_shard`` unit and
the model the root unit, over a ``replicate × shard`` device mesh (N ranks shard each unit; the world size divided
by N replicate it: N = world size is plain FSDP). π0's joint attention calls a decoder layer through
``attention_inputs`` and ``feed_forward`` rather than ``forward``, so those two methods are registered to gather the
layer's parameters. Checkpoints gather the full model and optimizer state (CPU-offloaded) into the usual checkpoint
files, which serve as they are; a run resumes from them with the same ``fsdp_devices``. An EMA of the weights is
sharded like them and gathered one tensor at a time into ``model.safetensors``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
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
from openpi.shared.checkpoint_files import RAW_WEIGHTS_FILE, WEIGHTS_FILE
from openpi.training.ema import ExponentialMovingAverage

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


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


def full_states(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The gathered model and optimizer state dicts (on the CPU, complete on rank 0; a collective on every rank)."""
    return get_model_state_dict(model, options=_FULL), get_optimizer_state_dict(model, optimizer, options=_FULL)


def gathered(state: Mapping[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """The full values of ``state``'s (sharded) tensors on the CPU, gathered one at a time, so a device holds one full
    tensor at most; kept where ``keep`` (rank 0), else empty. A collective on every rank."""
    full = {}
    for key, value in state.items():
        value = local_value(value)
        if keep:
            full[key] = value.cpu()
    return full


def load_full_states(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    checkpoint_dir: Path,
    optimizer_file: str,
    ema: ExponentialMovingAverage | None = None,
) -> None:
    """Loads a checkpoint's training weights (``model_raw.safetensors`` when it has an EMA), gathered optimizer state
    and, given ``ema``, its average (``model.safetensors``) into the sharded model, optimizer and average."""
    has_ema = (checkpoint_dir / RAW_WEIGHTS_FILE).is_file()
    weights = safetensors.torch.load_file(checkpoint_dir / (RAW_WEIGHTS_FILE if has_ema else WEIGHTS_FILE))
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    if ema is not None:  # without a saved average it starts from the loaded weights
        ema.load_state_dict(safetensors.torch.load_file(checkpoint_dir / WEIGHTS_FILE) if has_ema else weights)
    state = torch.load(checkpoint_dir / optimizer_file, map_location="cpu", weights_only=True)
    # Not strict: parameters that never received a gradient (π0's last language-model layer) have no AdamW state.
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor (the full value of a DTensor, e.g. a sharded gradient norm)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
