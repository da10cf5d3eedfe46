"""Fully sharded data parallel training (PyTorch FSDP2) for models whose weights and optimizer state do not fit one
device: ``--fsdp-devices N`` under ``torchrun``.

Every transformer layer (SigLIP's, the language model's and the action expert's) is its own ``fully_shard`` unit and
the model the root unit, over a ``replicate × shard`` device mesh (N ranks shard each unit; the world size divided
by N replicate it: N = world size is plain FSDP). π0's joint attention calls a decoder layer through
``attention_inputs`` and ``feed_forward`` rather than ``forward``, so those two methods are registered to gather the
layer's parameters. Checkpoints gather the full model and optimizer state (CPU-offloaded) into the usual checkpoint
files, which serve as they are; a run resumes from them with the same ``fsdp_devices``.
"""

from __future__ import annotations

from collections.abc import Iterator
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
from openpi.shared.checkpoint_files import WEIGHTS_FILE

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


def load_full_states(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: Path, optimizer_file: str):
    """Loads a checkpoint's weights and gathered optimizer state into the sharded ``model`` and ``optimizer``."""
    weights = safetensors.torch.load_file(checkpoint_dir / WEIGHTS_FILE)
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    state = torch.load(checkpoint_dir / optimizer_file, map_location="cpu", weights_only=True)
    # Not strict: parameters that never received a gradient (π0's last language-model layer) have no AdamW state.
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor (the full value of a DTensor, e.g. a sharded gradient norm)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
