"""Reference fixtures: a small model plus the outputs the published implementation computed from it, as numpy.

A fixture folder holds ``NAME_config.json`` (architecture), ``NAME_io.safetensors`` (inputs and outputs) and either
``NAME_weights.safetensors`` (PyTorch key layout) or ``checkpoint/params`` (a JAX/orbax tree). Each framework's
``reference`` module builds its model from a fixture and compares its outputs with :func:`relative_error`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from openpi.models.batch import IMAGE_KEYS
from openpi.models.pi0_config import Pi0Config
from openpi.models.variants import GemmaConfig, SiglipConfig, spell_variant

TOLERANCE = 2e-3


def _single(directory: Path, pattern: str) -> Path | None:
    matches = sorted(directory.glob(pattern))
    if len(matches) > 1:
        raise ValueError(f"Expected at most one {pattern} in {directory}, found {[m.name for m in matches]}")
    return matches[0] if matches else None


def config_from_fixture(raw: dict[str, Any]) -> Pi0Config:
    """The Pi0Config described by a fixture's ``*_config.json``."""
    fields = {f.name for f in dataclasses.fields(SiglipConfig)}
    vision = {key: value for key, value in raw["vision"].items() if key in fields}
    return Pi0Config(
        pi05=raw["pi05"],
        paligemma_variant=spell_variant(GemmaConfig(**raw["llm"])),
        action_expert_variant=spell_variant(GemmaConfig(**raw["expert"])),
        vision_variant=spell_variant(SiglipConfig(**vision)),
        vocab_size=raw["vocab_size"],
        action_dim=raw["action_dim"],
        action_horizon=raw["action_horizon"],
        max_token_len=raw["max_token_len"],
        dtype="float32",
    )


@dataclasses.dataclass
class ReferenceFixture:
    directory: Path
    raw_config: dict[str, Any]
    config: Pi0Config
    io: dict[str, np.ndarray]  # inputs (``input.*``) and reference outputs (``output.*``)

    @classmethod
    def load(cls, directory: str | Path) -> ReferenceFixture:
        directory = Path(directory)
        config_file, io_file = _single(directory, "*_config.json"), _single(directory, "*_io.safetensors")
        if config_file is None or io_file is None:
            raise FileNotFoundError(
                f"{directory} is not a reference fixture (needs *_config.json and *_io.safetensors)"
            )
        raw = json.loads(config_file.read_text())
        return cls(directory, raw, config_from_fixture(raw), safetensors.numpy.load_file(io_file))

    @property
    def checkpoint_dir(self) -> Path:
        """The JAX checkpoint folder (its ``params`` is the orbax tree) of a ``jax_*`` fixture."""
        return self.directory / "checkpoint"

    @property
    def is_jax(self) -> bool:
        return (self.checkpoint_dir / "params").is_dir()

    @property
    def weights_file(self) -> Path:
        """The PyTorch state dict of a PyTorch fixture."""
        weights = _single(self.directory, "*_weights.safetensors")
        if weights is None:
            raise FileNotFoundError(f"{self.directory} has neither *_weights.safetensors nor checkpoint/params")
        return weights

    @property
    def num_flow_steps(self) -> int:
        return int(self.raw_config.get("num_flow_steps", 10))

    def batch(self) -> dict[str, Any]:
        """The model inputs as a batch dict (``openpi.models.batch``); images as stored (channels-first for the
        PyTorch fixtures, channels-last for the JAX ones), float in [-1, 1]."""
        num_cameras = sum(1 for key in self.io if key.startswith("input.image_mask_"))
        names = IMAGE_KEYS if num_cameras <= len(IMAGE_KEYS) else tuple(f"image_{i}" for i in range(num_cameras))
        cameras = list(zip(range(num_cameras), names, strict=False))
        return {
            "image": {name: self.io[f"input.image_{i}"].astype(np.float32) for i, name in cameras},
            "image_mask": {name: self.io[f"input.image_mask_{i}"].astype(bool) for i, name in cameras},
            "state": self.io["input.state"].astype(np.float32),
            "tokenized_prompt": self.io["input.tokens"].astype(np.int64),
            "tokenized_prompt_mask": self.io["input.token_mask"].astype(bool),
        }


def relative_error(ours: Any, ref: Any) -> float:
    """``|ours - ref| / |ref|`` (L2 over every element) of two arrays (numpy, JAX or CPU torch)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def passes(errors: dict[str, float]) -> bool:
    return errors["prefix_pad_mask_mismatches"] == 0 and all(
        value <= TOLERANCE for key, value in errors.items() if key != "prefix_pad_mask_mismatches"
    )
