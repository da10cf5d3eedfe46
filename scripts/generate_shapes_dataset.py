"""Generates the shapes testbed's embedded dataset (LeRobot format, with its norm stats) and its tokenizer into
``$OPENPI_DATA_HOME/embedded_dataset/`` (default ``~/.cache/openpi``). Cached: a prepared dataset returns at once.

    uv run scripts/generate_shapes_dataset.py                                     # the debug configs' dataset
    uv run scripts/generate_shapes_dataset.py --config-name pi05_shapes_lightvla  # a training config's dataset
    uv run scripts/generate_shapes_dataset.py --num-episodes 2000 --image-size 112 ...  # any dataset spec
    uv run scripts/generate_shapes_dataset.py --tokenizer-only                    # the tokenizer alone

The trainers run this step themselves for configs that train on the testbed; the errors that find the data missing
name the command for its spec.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Annotated

import tyro

from openpi.envs import shapes_dataset
from openpi.policies.shapes_policy import EmbeddedDataConfig
from openpi.training import config as _config


@dataclasses.dataclass(frozen=True)
class Args:
    spec: Annotated[shapes_dataset.EmbeddedDatasetSpec, tyro.conf.OmitArgPrefixes] = dataclasses.field(
        default_factory=shapes_dataset.EmbeddedDatasetSpec
    )
    config_name: str | None = None
    """A training config whose dataset to generate (instead of the spec's flags)."""
    tokenizer_only: bool = False
    """Train the tokenizer alone (what the ``debug`` config's fake data and a served testbed policy need)."""


def resolve_spec(args: Args) -> shapes_dataset.EmbeddedDatasetSpec:
    """The spec of ``--config-name``'s dataset, or the one the flags give."""
    if args.config_name is None:
        return args.spec
    if args.spec != shapes_dataset.EmbeddedDatasetSpec():
        raise ValueError("Pass --config-name or the dataset spec's flags, not both")
    data = _config.get_config(args.config_name).data
    if not isinstance(data, EmbeddedDataConfig):
        raise ValueError(f"Config {args.config_name!r} does not train on the shapes dataset: {type(data).__name__}")
    return data.spec


def main(args: Args) -> None:
    start = time.perf_counter()
    if args.tokenizer_only:
        print(f"Tokenizer: {shapes_dataset.prepare_tokenizer()}")
    else:
        prepared = shapes_dataset.prepare(resolve_spec(args))
        print(f"Dataset (with norm_stats.json): {prepared.root}\nTokenizer: {prepared.tokenizer}")
    print(f"Prepared in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        main(tyro.cli(Args))
    except ValueError as e:
        sys.exit(f"error: {e}")
