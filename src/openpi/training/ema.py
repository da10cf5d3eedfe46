"""An exponential moving average of the model's weights, the weights upstream serves after fine-tuning.

After every optimiser step ``ema = decay * ema + (1 - decay) * params`` (upstream's update, no bias correction),
starting from the initial weights. The average is kept (and saved) in float32 whatever the training precision, on
the model's device, so a resumed run continues it exactly; buffers are copied as they are. For a model sharded with
FSDP2 the average is sharded like the parameters (each rank updates its own shards: 1/N of the memory).
Checkpoints store it as ``model.safetensors`` (what loaders read; they cast to the model's dtypes) and the raw
weights as ``model_raw.safetensors`` (what training resumes from); see :mod:`openpi.training.checkpoints`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


class ExponentialMovingAverage:
    """The moving average of ``model``'s parameters with ``decay`` (e.g. 0.999)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {key: value.detach().float().clone() for key, value in model.state_dict().items()}
        self._parameters = dict(model.named_parameters())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the average towards ``model``'s current parameters; copies its buffers."""
        for key, value in model.state_dict().items():
            if key in self._parameters:
                self.shadow[key].lerp_(value.detach().float(), 1.0 - self.decay)
            else:
                self.shadow[key].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (float32) under the model's keys."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores the average from full tensors (e.g. a checkpoint's ``model.safetensors``); a sharded average
        takes its own shards of them."""
        missing, unexpected = set(self.shadow) - set(state), set(state) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(
                f"EMA state does not match the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        for key, value in state.items():
            target = self.shadow[key]
            value = value.to(target.device, target.dtype)
            if isinstance(target, DTensor):  # every rank holds the full value: cut out its shard, no communication
                value = distribute_tensor(value, target.device_mesh, target.placements, src_data_rank=None)
            target.copy_(value)
