"""Conversion of JAX/orbax π0 and π0.5 checkpoints into a PyTorch checkpoint folder.

:mod:`openpi.conversion.rules` says what every published leaf becomes; :mod:`openpi.models.orbax_params` reads the
leaves one at a time; :mod:`openpi.models_pytorch.safetensors_stream` writes the output with its header declared
first, so memory stays bounded by the largest leaf. A LoRA checkpoint has its adapters folded in by the JAX model's
:func:`openpi.models_jax.lora.merge_lora` first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tqdm

from openpi.conversion.rules import (
    Precision,
    build_fast_rules,
    build_rules,
    check_precision,
    convert_fast_params,
    convert_leaf,
    convert_params,
    target_dtype,
)
from openpi.models.orbax_params import (
    ParamInfo,
    flatten_params,
    load_jax_params,
    read_leaves,
    read_param_metadata,
    resolve_params_dir,
)
from openpi.models.param_layout import (
    CheckpointMismatchError,
    base_variant,
    check_fast_params,
    check_params,
    infer_model_config,
)
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models_jax import lora
from openpi.models_jax import params as jax_params
from openpi.models_pytorch.safetensors_stream import SafetensorsStreamWriter
from openpi.shared import checkpoint_files, checkpoint_integrity

logger = logging.getLogger(__name__)


def convert_params_dir(
    params_dir: str | os.PathLike, config: Pi0Config, precision: Precision = "float32"
) -> dict[str, np.ndarray]:
    """The PyTorch state dict (numpy arrays) of the orbax tree at ``params_dir``, checked against ``config``.

    Holds the whole model in memory; meant for small models and tests.
    """
    flat = flatten_params(load_jax_params(resolve_params_dir(params_dir)))
    return dict(convert_params(flat, config, precision))


def convert_fast_params_dir(
    params_dir: str | os.PathLike, config: Pi0FastConfig, precision: Precision = "float32"
) -> dict[str, np.ndarray]:
    """The ``Pi0FastPytorch`` state dict (numpy arrays) of the π0-FAST orbax tree at ``params_dir``."""
    flat = flatten_params(load_jax_params(resolve_params_dir(params_dir)))
    return dict(convert_fast_params(flat, config, precision))


def _merged_lora_tree(checkpoint_dir: Path, config: Pi0Config | None) -> tuple[Pi0Config, dict[str, np.ndarray]]:
    """The base-variant config and flat tree of a LoRA checkpoint with its adapters folded in."""
    if config is None or not any(c.lora_rank for c in (config.llm_config, config.expert_config)):
        raise CheckpointMismatchError(
            f"{checkpoint_dir} holds LoRA adapters: pass the LoRA config it was trained with (--config-name) so "
            "that they can be merged into the weights"
        )
    tree = jax_params.load_params(checkpoint_dir, config)
    flat = flatten_params(lora.merge_lora(tree, config))
    logger.info("Merged the LoRA adapters into their weights")
    return base_variant(config), {path: np.asarray(array) for path, array in flat.items()}


def describe_params(infos: Mapping[str, ParamInfo]) -> str:
    """A listing of the tree (path, shape, dtype), the parameter count and, when it can be told, the architecture."""
    lines = [f"{path:<90} {list(info.shape)!s:<28} {info.dtype}" for path, info in sorted(infos.items())]
    total = sum(math.prod(info.shape) for info in infos.values())
    lines.append(f"{len(infos)} arrays, {total:,} parameters")
    try:
        config = infer_model_config({path: info.shape for path, info in infos.items()})
    except (CheckpointMismatchError, ValueError) as e:
        lines.append(f"architecture: unknown ({e})")
    else:
        lines.append(
            f"architecture: {'π0.5' if config.pi05 else 'π0'}; language model {config.paligemma_variant}; "
            f"action expert {config.action_expert_variant}; vision {config.vision_variant}; "
            f"vocab_size={config.vocab_size}; action_dim={config.action_dim}"
        )
    return "\n".join(lines)


def write_config(config: Pi0Config | Pi0FastConfig, output_dir: Path) -> Path:
    """Writes ``config.json`` (the model config as a dict)."""
    path = output_dir / checkpoint_files.CONFIG_FILE
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return path


def convert_checkpoint(
    checkpoint_dir: str | os.PathLike,
    config: Pi0Config | Pi0FastConfig | None,
    output_dir: str | os.PathLike,
    precision: Precision = "bfloat16",
    allow_nonfinite: bool = False,
) -> Path:
    """Converts ``<checkpoint_dir>/params`` into ``output_dir/{model.safetensors, config.json, assets/}`` and their
    manifest of checksums (``MANIFEST.sha256.json``, which the server verifies).

    With ``config`` None the architecture comes from the tree alone (non-weight fields keep their defaults);
    otherwise the tree must match ``config`` exactly. Reads one leaf at a time and streams the tensors to disk.
    The written ``config.json`` carries ``dtype=precision``. Returns the path of ``model.safetensors``.

    A tree with LoRA adapters (a JAX LoRA fine-tune; ``config`` must be its LoRA config) is loaded whole, the
    adapters folded into their weights, and written as the base variant. A π0-FAST tree needs its config (the
    PaliGemma leaves alone; no LoRA merge).
    """
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    params_dir = resolve_params_dir(checkpoint_dir)
    damaged = checkpoint_integrity.structural_problems([params_dir])
    if damaged:  # found before orbax, whose failed reads leave threads that print tracebacks at exit
        raise CheckpointMismatchError(f"The orbax tree at {params_dir} is damaged: {'; '.join(damaged)}")
    infos = read_param_metadata(params_dir)
    shapes = {path: info.shape for path, info in infos.items()}
    merged = None
    if isinstance(config, Pi0FastConfig):
        if any("lora_" in path for path in shapes):
            raise CheckpointMismatchError(
                f"{checkpoint_dir} is a π0-FAST LoRA tree: merging its adapters is not supported"
            )
        check_fast_params(shapes, config)
        rules = build_fast_rules(config)
    else:
        if any("lora_" in path for path in shapes):
            config, merged = _merged_lora_tree(checkpoint_dir, config)
            shapes = {path: tuple(array.shape) for path, array in merged.items()}
        if config is None:
            config = infer_model_config(shapes)
            logger.info("Architecture read from the checkpoint: %s", config)
        check_params(shapes, config)
        rules = build_rules(config)
    check_precision(precision)
    output_dir.mkdir(parents=True, exist_ok=True)
    entries = [(t.key, t.shape, target_dtype(t, precision)) for rule in rules for t in rule.targets]
    weights_file = checkpoint_files.weights_path(output_dir)
    writer = SafetensorsStreamWriter(weights_file, entries, {"format": "pt", "precision": precision})
    try:
        for rule in tqdm.tqdm(rules, desc="Converting", unit="array"):
            if merged is None:
                (array,) = read_leaves(params_dir, [infos[rule.source].stored_path])
            else:
                array = merged[rule.source]
            for key, tensor in convert_leaf(rule, array, precision, allow_nonfinite):
                writer.write(key, tensor)
            del array
    except BaseException:
        writer.abort()
        raise
    writer.close()
    write_config(dataclasses.replace(config, dtype=precision), output_dir)
    assets = checkpoint_files.assets_dir(checkpoint_dir)
    if assets.is_dir():
        shutil.copytree(assets, checkpoint_files.assets_dir(output_dir), dirs_exist_ok=True)
    checkpoint_integrity.write_manifest(output_dir)
    logger.info("Wrote %d tensors to %s", len(entries), weights_file)
    return weights_file
