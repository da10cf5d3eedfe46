"""Folding a LoRA fine-tune's adapters into its base weights (``scripts/merge_lora.py``)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from openpi.shared import checkpoint_files
from openpi.training import config as _config

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Args:
    config: str
    """The LoRA training config the checkpoint was trained with."""
    checkpoint: Path
    """Its checkpoint folder."""
    output: Path
    """Folder for the merged model.safetensors and assets/."""
    raw_weights: bool = False
    """Merge model_raw.safetensors (the optimised weights) instead of model.safetensors (the EMA, if one was kept)."""


def merge(args: Args) -> Path:
    """Writes the merged checkpoint (weights and assets) to ``args.output``; returns its weights file."""
    from openpi.models_pytorch import lora, weights  # torch: imported by a merge, not by --help
    from openpi.models_pytorch.pi0_pytorch import PI0Pytorch

    model_config = _config.get_config(args.config).model
    model = PI0Pytorch(model_config)
    if not any(isinstance(m, lora.LoRALinear) for m in model.modules()):
        raise ValueError(f"Config {args.config!r} has no LoRA adapters (its variants have lora_rank 0)")
    filename = checkpoint_files.RAW_WEIGHTS_FILE if args.raw_weights else checkpoint_files.WEIGHTS_FILE
    weights.load_weights(model, args.checkpoint, filename)
    path = weights.save_weights(lora.merge_lora(model), args.output)
    assets = checkpoint_files.assets_dir(args.checkpoint)
    if assets.is_dir():
        shutil.copytree(assets, checkpoint_files.assets_dir(args.output), dirs_exist_ok=True)
    logger.info("Wrote %s: serve it with a config whose variants are the base ones of %s", path, args.config)
    return path
