"""Converting a JAX/orbax π0 or π0.5 checkpoint into a PyTorch checkpoint folder
(``examples/convert_jax_model_to_pytorch.py``): the command's arguments, inspection and conversion."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

from openpi.models import orbax_params
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.training import config as training_config


@dataclasses.dataclass
class Args:
    """Command-line arguments."""

    checkpoint_dir: Path
    """Checkpoint folder holding ``params/`` (and optionally ``assets/``), or the ``params`` folder itself."""
    config_name: str | None = None
    """Registered training config whose model the checkpoint must match. Without it the architecture comes from the
    tree alone and the fields the weights cannot tell (action_horizon, max_token_len, ...) keep their defaults."""
    output_path: Path | None = None
    """Output folder for model.safetensors, config.json and assets/."""
    precision: Literal["bfloat16", "float32"] = "bfloat16"
    """Weights dtype; bfloat16 keeps vision embeddings, norms and action/time/state projections in float32."""
    inspect_only: bool = False
    """Print the parameter tree (paths, shapes, dtypes, total parameters) and exit without converting."""
    allow_nonfinite: bool = False
    """Convert weights holding NaN or infinity instead of refusing them."""


def model_config(config_name: str) -> Pi0Config | Pi0FastConfig:
    """The model config of a registered training config."""
    return training_config.get_config(config_name).model


def convert_or_inspect(args: Args) -> None:
    """Prints the tree with ``--inspect-only``; otherwise converts it to ``args.output_path``."""
    from openpi.conversion import convert  # torch and JAX: imported by a conversion, not by --help

    if args.inspect_only:
        params_dir = orbax_params.resolve_params_dir(args.checkpoint_dir)
        print(convert.describe_params(orbax_params.read_param_metadata(params_dir)))
        return
    if args.output_path is None:
        raise SystemExit("--output-path is required unless --inspect-only is given")
    config = model_config(args.config_name) if args.config_name is not None else None
    weights = convert.convert_checkpoint(
        args.checkpoint_dir, config, args.output_path, args.precision, args.allow_nonfinite
    )
    logging.info("Converted checkpoint written to %s", weights.parent)
