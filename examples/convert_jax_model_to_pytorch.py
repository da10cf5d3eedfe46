"""Converts a JAX/orbax π0 or π0.5 checkpoint into a PyTorch ``model.safetensors`` + ``config.json`` (+ ``assets/``).

    uv run examples/convert_jax_model_to_pytorch.py --checkpoint-dir CKPT --config-name pi05_libero_pytorch \\
        --output-path OUT [--precision bfloat16|float32]
    uv run examples/convert_jax_model_to_pytorch.py --checkpoint-dir CKPT --inspect-only

The architecture (π0 vs π0.5 and every dimension) is read from the parameter tree and must match the named config.
See docs/converting.md.
"""

import logging

import tyro

from openpi.cli import convert_jax_checkpoint, user_errors

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every leaf it restores at INFO
    user_errors.run(lambda: convert_jax_checkpoint.convert_or_inspect(tyro.cli(convert_jax_checkpoint.Args)))
