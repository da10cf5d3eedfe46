"""Reference fixtures: a small model plus the outputs the published implementation computed from it.

A fixture folder holds ``NAME_config.json`` (architecture), ``NAME_io.safetensors`` (inputs and outputs) and either
``NAME_weights.safetensors`` (PyTorch key layout) or ``checkpoint/params`` (a JAX/orbax tree, converted on load).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from openpi.models.observation import IMAGE_KEYS, Observation
from openpi.models.pi0_config import Pi0Config
from openpi.models.variants import GemmaConfig, SiglipConfig, spell_variant
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch

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
    io: dict[str, torch.Tensor]

    @classmethod
    def load(cls, directory: str | Path) -> ReferenceFixture:
        directory = Path(directory)
        config_file, io_file = _single(directory, "*_config.json"), _single(directory, "*_io.safetensors")
        if config_file is None or io_file is None:
            raise FileNotFoundError(
                f"{directory} is not a reference fixture (needs *_config.json and *_io.safetensors)"
            )
        raw = json.loads(config_file.read_text())
        return cls(directory, raw, config_from_fixture(raw), safetensors.torch.load_file(io_file))

    @property
    def is_jax(self) -> bool:
        return (self.directory / "checkpoint" / "params").is_dir()

    @property
    def num_flow_steps(self) -> int:
        return int(self.raw_config.get("num_flow_steps", 10))

    def build_model(self) -> PI0Pytorch:
        """The fixture's model with its weights (converted from the JAX tree for ``jax_*`` fixtures)."""
        model = PI0Pytorch(self.config)
        if self.is_jax:
            from openpi.models_pytorch import convert

            state = convert.convert_params_dir(self.directory / "checkpoint" / "params", self.config)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        else:
            from openpi.models_pytorch.weights import load_weights

            weights = _single(self.directory, "*_weights.safetensors")
            if weights is None:
                raise FileNotFoundError(f"{self.directory} has neither *_weights.safetensors nor checkpoint/params")
            load_weights(model, weights)
        return model.eval()

    def observation(self) -> Observation:
        num_cameras = sum(1 for key in self.io if key.startswith("input.image_mask_"))
        names = IMAGE_KEYS if num_cameras <= len(IMAGE_KEYS) else tuple(f"image_{i}" for i in range(num_cameras))
        images, masks = {}, {}
        for i, name in zip(range(num_cameras), names, strict=False):
            image = self.io[f"input.image_{i}"].float()
            images[name] = image.permute(0, 3, 1, 2) if image.shape[-1] == 3 else image
            masks[name] = self.io[f"input.image_mask_{i}"].bool()
        return Observation(
            images=images,
            image_masks=masks,
            state=self.io["input.state"].float(),
            tokenized_prompt=self.io["input.tokens"].long(),
            tokenized_prompt_mask=self.io["input.token_mask"].bool(),
        )


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().double(), ref.detach().double()
    return float(torch.linalg.vector_norm(ours - ref) / torch.linalg.vector_norm(ref))


def compare(model: PI0Pytorch, fixture: ReferenceFixture) -> dict[str, float]:
    """Relative errors of prefix embeddings, per-element loss and sampled actions (and prefix-mask mismatches)."""
    obs, io = fixture.observation(), fixture.io
    images = list(obs.images.values())
    masks = [obs.image_masks[name] for name in obs.images]
    with torch.no_grad():
        prefix = model.embed_prefix(images, masks, obs.tokenized_prompt, obs.tokenized_prompt_mask)
        embs, pad = prefix.embs, prefix.pad_masks
        loss = model.forward(obs, io["input.actions"], noise=io["input.noise"], time=io["input.time"])
        actions = model.sample_actions(obs, noise=io["input.sample_noise"], num_steps=fixture.num_flow_steps)
    ref_pad = io["output.prefix_pad_mask"].bool()
    if pad.shape != ref_pad.shape:
        raise ValueError(f"Prefix length {tuple(pad.shape)} differs from the reference {tuple(ref_pad.shape)}")
    return {
        "prefix_embs": relative_error(embs, io["output.prefix_embs"]),
        "prefix_pad_mask_mismatches": float((pad != ref_pad).sum()),
        "loss": relative_error(loss, io["output.loss"]),
        "sampled_actions": relative_error(actions, io["output.sampled_actions"]),
    }


def passes(errors: dict[str, float]) -> bool:
    return errors["prefix_pad_mask_mismatches"] == 0 and all(
        value <= TOLERANCE for key, value in errors.items() if key != "prefix_pad_mask_mismatches"
    )
