"""Train a π0 / π0.5 model in JAX (the upstream framework's entry point), with the same configs as
``scripts/train_pytorch.py``::

    uv run scripts/train.py debug_pi05_lightvla --exp-name run1

Uses every local device: batches shard over all of them, parameters and optimizer state over ``--fsdp-devices``
(a data × fsdp mesh). Start a fine-tune from a published checkpoint with ``--weight-path CKPT`` (the folder holding
``params/``). ``--resume`` / ``--overwrite`` and every config override work as in the PyTorch trainer; the
PyTorch-only fields (``pytorch_*``, LoRA variants) are documented in docs/training.md.
"""

import logging

from openpi.cli import user_errors
from openpi.training import config as _config


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes at INFO
    config = _config.cli()
    from openpi.training import jax_trainer  # JAX: imported once the arguments parse, so that --help answers at once

    jax_trainer.train(config)


if __name__ == "__main__":
    user_errors.run(main)
