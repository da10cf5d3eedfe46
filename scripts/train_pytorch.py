"""Train a π0 / π0.5 model in PyTorch.

Single process (GPU if available, else CPU)::

    uv run scripts/train_pytorch.py debug_pi05_lightvla --exp-name run1

Several GPUs on one machine (DDP)::

    uv run torchrun --standalone --nnodes=1 --nproc_per_node=2 scripts/train_pytorch.py CONFIG --exp-name run1

Any config field can be overridden (``--batch-size 16``, ``--model.token-pruning-enabled True``, ``--resume``,
``--overwrite``, ``--no-wandb-enabled``); see ``--help``. Details: docs/training.md.
"""

import logging
import os

from openpi.cli import user_errors
from openpi.training import config as _config


def main() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    config = _config.cli()
    from openpi.training import trainer  # torch: imported once the arguments parse, so that --help answers at once

    trainer.train(config)


if __name__ == "__main__":
    user_errors.run(main)
