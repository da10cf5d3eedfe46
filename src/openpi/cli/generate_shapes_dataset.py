"""Generating the shapes testbed's embedded dataset and tokenizer (``scripts/generate_shapes_dataset.py``): the
command's arguments and the spec they name."""

from __future__ import annotations

import dataclasses
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


def generate(args: Args) -> None:
    """Prepares the dataset of ``args`` (or only the tokenizer) and prints where it lies and how long it took."""
    start = time.perf_counter()
    if args.tokenizer_only:
        print(f"Tokenizer: {shapes_dataset.prepare_tokenizer()}")
    else:
        prepared = shapes_dataset.prepare(resolve_spec(args))
        print(f"Dataset (with norm_stats.json): {prepared.root}\nTokenizer: {prepared.tokenizer}")
    print(f"Prepared in {time.perf_counter() - start:.1f} s")
