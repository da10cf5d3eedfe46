"""π0-FAST reference fixtures (``shared/reference/pi0_fast_tiny``): a tiny model and what upstream's JAX π0-FAST
computed from it. Each framework's ``fast_reference`` module runs its model on the inputs and reports the errors
that :func:`passes` checks against the fixture's tolerances."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.numpy

from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models.variants import GemmaConfig, SiglipConfig, spell_variant

# The fixture README's suggested tolerances (its float32 noise floor is 10-100x smaller).
REL_L2 = 1e-4
MAX_ABS = 1e-3
NLL_ATOL = 1e-4
LOSS_RTOL = 1e-5
CONFIG_MARKER = "Pi0FASTConfig"

Mode = Literal["train", "infer"]


def is_fast_fixture(directory: str | Path) -> bool:
    """Whether ``directory`` holds a π0-FAST fixture (its config json names ``Pi0FASTConfig``)."""
    return any(CONFIG_MARKER in json.loads(p.read_text()) for p in Path(directory).glob("*_config.json"))


def config_from_fixture(raw: dict[str, Any]) -> Pi0FastConfig:
    gemma, siglip = raw["gemma"], raw["siglip"]
    llm = GemmaConfig(
        width=gemma["width"],
        depth=gemma["depth"],
        mlp_dim=gemma["mlp_dim"],
        num_heads=gemma["num_heads"],
        num_kv_heads=gemma["num_kv_heads"],
        head_dim=gemma["head_dim"],
    )
    vision = SiglipConfig(
        hidden_size=siglip["width"],
        num_hidden_layers=siglip["depth"],
        num_attention_heads=siglip["num_heads"],
        intermediate_size=siglip["mlp_dim"],
        patch_size=siglip["patch_size"][0],
        image_size=siglip["image_size"][0],
    )
    model = raw[CONFIG_MARKER]
    return Pi0FastConfig(
        paligemma_variant=spell_variant(llm),
        vision_variant=spell_variant(vision),
        vocab_size=raw["vocab_size"],
        action_dim=model["action_dim"],
        action_horizon=model["action_horizon"],
        max_token_len=model["max_token_len"],
        dtype="float32",
        max_decoding_steps=raw["sample_actions_args"]["max_decoding_steps"],
        temperature=raw["sample_actions_args"]["temperature"],
    )


@dataclasses.dataclass
class FastReferenceFixture:
    directory: Path
    raw_config: dict[str, Any]
    config: Pi0FastConfig
    io: dict[str, np.ndarray]

    @classmethod
    def load(cls, directory: str | Path) -> FastReferenceFixture:
        directory = Path(directory)
        configs, ios = sorted(directory.glob("*_config.json")), sorted(directory.glob("*_io.safetensors"))
        if len(configs) != 1 or len(ios) != 1:
            raise FileNotFoundError(f"{directory} is not a π0-FAST fixture (needs one *_config.json, *_io.safetensors)")
        raw = json.loads(configs[0].read_text())
        if CONFIG_MARKER not in raw:
            raise ValueError(f"{configs[0]} describes no π0-FAST model (no {CONFIG_MARKER})")
        return cls(directory, raw, config_from_fixture(raw), safetensors.numpy.load_file(ios[0]))

    @property
    def checkpoint_dir(self) -> Path:
        """The JAX checkpoint folder: ``params`` is the published orbax tree."""
        return self.directory / "checkpoint"

    @property
    def camera_names(self) -> list[str]:
        return list(self.raw_config["image_keys_in_order"])

    def batch(self, mode: Mode) -> dict[str, Any]:
        """The model inputs of ``mode`` (train: the full sequence; infer: the prefix) as a batch dict; images
        channels-last in [-1, 1]."""
        io = self.io
        return {
            "image": {name: io[f"images/{name}"] for name in self.camera_names},
            "image_mask": {name: io[f"image_masks/{name}"] for name in self.camera_names},
            "state": io["state"],
            "tokenized_prompt": io[f"{mode}/tokenized_prompt"].astype(np.int64),
            "tokenized_prompt_mask": io[f"{mode}/tokenized_prompt_mask"],
            "token_ar_mask": io[f"{mode}/token_ar_mask"].astype(np.int64),
            "token_loss_mask": io[f"{mode}/token_loss_mask"],
        }


def compare_arrays(name: str, ours: Any, ref: Any) -> dict[str, float]:
    """``{name}_rel_l2`` and ``{name}_max_abs`` of two arrays."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return {
        f"{name}_rel_l2": float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)),
        f"{name}_max_abs": float(np.abs(ours - ref).max()),
    }


def errors_of(
    fixture: FastReferenceFixture,
    logits: Any,
    token_nll: Any,
    loss: Any,
    img_tokens: dict[str, Any],
    decode_tokens: Any,
    decode_logits: Any,
) -> dict[str, float]:
    """Every compared quantity's error (the keys :func:`passes` knows)."""
    io = fixture.io
    errors = compare_arrays("logits", logits, io["out/logits"])
    for name in fixture.camera_names:
        errors |= compare_arrays(f"img_tokens_{name}", img_tokens[name], io[f"out/img_tokens/{name}"])
    errors |= compare_arrays("decode_logits", decode_logits, io["out/decode_logits"])
    errors["token_nll_max_abs"] = float(np.abs(np.asarray(token_nll) - io["out/token_nll"]).max())
    errors["loss_max_rel"] = float(np.max(np.abs(np.asarray(loss) / io["out/loss"] - 1.0)))
    errors["decode_token_mismatches"] = float((np.asarray(decode_tokens) != io["out/decode_tokens"]).sum())
    return errors


def passes(errors: dict[str, float]) -> bool:
    limits = {"_rel_l2": REL_L2, "_max_abs": MAX_ABS, "token_nll_max_abs": NLL_ATOL, "loss_max_rel": LOSS_RTOL}
    for key, value in errors.items():
        if key == "decode_token_mismatches":
            limit = 0.0
        elif key in limits:
            limit = limits[key]
        else:
            limit = next(v for suffix, v in limits.items() if key.endswith(suffix))
        if not value <= limit:
            return False
    return True
