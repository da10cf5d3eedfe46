"""Loading and saving ``model.safetensors`` in the published PyTorch key layout."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from openpi.shared.checkpoint_files import WEIGHTS_FILE, weights_path

logger = logging.getLogger(__name__)

# Parameters the published checkpoints keep in float32 when the rest of the model is bfloat16.
FLOAT32_PARAMETERS = (
    "vision_model.embeddings.patch_embedding.",
    "vision_model.embeddings.position_embedding.",
    "input_layernorm.",
    "post_attention_layernorm.",
    "language_model.norm.",
    "gemma_expert.model.norm.",
    "action_in_proj.",
    "action_out_proj.",
    "time_mlp_in.",
    "time_mlp_out.",
    "state_proj.",
)


def keeps_float32(key: str) -> bool:
    """Whether parameter ``key`` stays float32 when the model (or a converted checkpoint) is bfloat16."""
    return any(pattern in key for pattern in FLOAT32_PARAMETERS)


# Present in checkpoints made by the upstream tools but not parameters of ours: the language model's head is tied to
# its token embedding and the action expert's head is never used.
IGNORED_KEYS = ("paligemma_with_expert.paligemma.lm_head.weight", "paligemma_with_expert.gemma_expert.lm_head.weight")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raises a ValueError listing every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = "\n  ".join(items[:20]) + (f"\n  ... and {len(items) - 20} more" if len(items) > 20 else "")
            problems.append(f"{len(items)} {title} key(s):\n  {shown}")
    if problems:
        raise ValueError("Checkpoint does not match the model:\n" + "\n".join(problems))


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    filename: str = WEIGHTS_FILE,
    *,
    keep_if_missing: Callable[[str], bool] | None = None,
) -> list[str]:
    """Loads a ``model.safetensors`` (or ``filename`` in a folder, or a file) strictly into ``model``.

    Values are cast to each parameter's dtype and device. Keys the file lacks are errors, except those for which
    ``keep_if_missing(key)`` holds (e.g. LoRA adapters when a base checkpoint initialises an adapted model): they
    keep the model's values. Returns the ignored known extras (``lm_head`` weights).
    """
    file = weights_path(path, filename)
    if not file.is_file():
        raise FileNotFoundError(f"No weights file at {file}")
    state = safetensors.torch.load_file(file)
    ignored = [key for key in IGNORED_KEYS if state.pop(key, None) is not None]
    if ignored:
        logger.info("Ignoring %s (tied to the token embedding or unused by π0)", ", ".join(ignored))
    if keep_if_missing is not None:
        kept = {key: value for key, value in model.state_dict().items() if key not in state and keep_if_missing(key)}
        if kept:
            logger.info("%d tensors absent from %s keep their initial values", len(kept), file)
        state.update(kept)
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return ignored


def save_weights(
    model: nn.Module | dict[str, torch.Tensor], directory: str | os.PathLike, filename: str = WEIGHTS_FILE
) -> Path:
    """Writes the weights of ``model`` (a module or a state dict) to ``directory/filename`` atomically (temporary
    file, then rename) and returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    tmp = directory / f".{filename}.tmp"
    named = model.state_dict() if isinstance(model, nn.Module) else model
    state = {key: value.detach().contiguous().cpu() for key, value in named.items()}
    safetensors.torch.save_file(state, tmp)
    os.replace(tmp, target)
    return target
