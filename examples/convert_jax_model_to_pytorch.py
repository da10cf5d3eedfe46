"""Converts a JAX/orbax π0 or π0.5 checkpoint into a PyTorch ``model.safetensors`` + ``config.json`` (+ ``assets/``).

    uv run examples/convert_jax_model_to_pytorch.py --checkpoint-dir CKPT --config-name pi05_libero_pytorch \\
        --output-path OUT [--precision bfloat16|float32]
    uv run examples/convert_jax_model_to_pytorch.py --checkpoint-dir CKPT --inspect-only

The architecture (π0 vs π0.5 and every dimension) is read from the parameter tree and must match the named config.
See docs/converting.md.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import tyro

from openpi.conversion import convert, rules
from openpi.models import orbax_params
from openpi.models.pi0_config import Pi0Config


@dataclasses.dataclass
class Args:
    """Command-line arguments."""

    # Checkpoint folder holding ``params/`` (and optionally ``assets/``), or the ``params`` folder itself.
    checkpoint_dir: Path
    # Registered training config whose model the checkpoint must match. Without it the architecture comes from the
    # tree alone and the fields the weights cannot tell (action_horizon, max_token_len, ...) keep their defaults.
    config_name: str | None = None
    # Output folder for model.safetensors, config.json and assets/.
    output_path: Path | None = None
    # Weights dtype; bfloat16 keeps vision embeddings, norms and action/time/state projections in float32.
    precision: rules.Precision = "bfloat16"
    # Print the parameter tree (paths, shapes, dtypes, total parameters) and exit without converting.
    inspect_only: bool = False
    allow_nonfinite: bool = False
    """Convert weights holding NaN or infinity instead of refusing them."""


def model_config(config_name: str) -> Pi0Config:
    """The model config of a registered training config."""
    from openpi.training import config as training_config

    return training_config.get_config(config_name).model


def main(args: Args) -> None:
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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every leaf it restores at INFO
    main(tyro.cli(Args))
