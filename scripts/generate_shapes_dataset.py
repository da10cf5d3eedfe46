"""Generates the shapes testbed's embedded dataset (LeRobot format, with its norm stats) and its tokenizer into
``$OPENPI_DATA_HOME/embedded_dataset/`` (default ``~/.cache/openpi``). Cached: a prepared dataset returns at once.

    uv run scripts/generate_shapes_dataset.py                                     # the debug configs' dataset
    uv run scripts/generate_shapes_dataset.py --config-name pi05_shapes_lightvla  # a training config's dataset
    uv run scripts/generate_shapes_dataset.py --num-episodes 2000 --image-size 112 ...  # any dataset spec
    uv run scripts/generate_shapes_dataset.py --tokenizer-only                    # the tokenizer alone

The trainers run this step themselves for configs that train on the testbed; the errors that find the data missing
name the command for its spec.
"""

import logging
import sys

import tyro

from openpi.cli import generate_shapes_dataset

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        generate_shapes_dataset.generate(tyro.cli(generate_shapes_dataset.Args))
    except ValueError as e:
        sys.exit(f"error: {e}")
