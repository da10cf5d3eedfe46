"""The policy's input contract: what any observation must satisfy before a transform touches it.

Robot mappings check their own keys; this layer checks what holds for every robot — value types, array dtypes and
sizes, finite numbers, image shapes and value ranges, the prompt's type and encoding — and names the key and the
problem in one ``ValueError``. Nothing is coerced silently (an int64 image is not wrapped modulo 256).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MAX_DIM = 4096  # larger than any camera or state; a bigger dimension is a malformed request
MAX_NDIM = 4
_NUMERIC_KINDS = "biuf"


def validated_copy(obs: Any) -> dict:
    """A copy of ``obs`` (its nested dicts copied; transforms may modify them) that satisfies the contract.

    Raises:
        ValueError: naming the key and what is wrong with it.
    """
    if not isinstance(obs, Mapping):
        raise ValueError(f"An observation must be a dict, got {type(obs).__name__}")
    return _copy(obs, "")


def _copy(obs: Mapping, prefix: str) -> dict:
    copy = {}
    for key, value in obs.items():
        if not isinstance(key, str):
            raise ValueError(f"Observation keys must be strings, got {key!r} in {prefix or 'the observation'}")
        name = f"{prefix}{key}"
        if key == "prompt":
            copy[key] = _prompt(value)
        elif isinstance(value, Mapping):
            copy[key] = _copy(value, f"{name}/")
        else:
            copy[key] = _array(name, value)
    return copy


def _prompt(value: Any) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "US":
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"'prompt' is not valid UTF-8 text ({e.reason} at byte {e.start})") from e
    if not isinstance(value, str):
        raise ValueError(f"'prompt' must be a string, got {type(value).__name__}")
    return value


def _array(name: str, value: Any) -> np.ndarray | np.generic:
    array = np.asarray(value)
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"Observation key {name!r} has dtype {array.dtype}; expected a numeric or bool array")
    if array.ndim > MAX_NDIM or any(d > MAX_DIM for d in array.shape):
        raise ValueError(f"Observation key {name!r} has an absurd shape {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"Observation key {name!r} is empty (shape {array.shape})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"Observation key {name!r} holds NaN or infinite values")
    if _is_image(name):
        _check_image(name, array)
    return value


def _is_image(name: str) -> bool:
    """``observation/image``, ``observation/wrist_image``, ``images/cam_high``, ... but not ``image_mask``."""
    return "image" in name and "mask" not in name


def _check_image(name: str, image: np.ndarray) -> None:
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"Image {name!r} must be [H, W, 3] or [3, H, W], got shape {image.shape}")
    kind = image.dtype.kind
    if kind == "f" and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError(f"Float image {name!r} must hold values in [0, 1], got [{image.min():.3g}, {image.max():.3g}]")
    if kind in "iu" and image.dtype != np.uint8 and (image.min() < 0 or image.max() > 255):
        raise ValueError(
            f"Integer image {name!r} ({image.dtype}) must hold values in [0, 255], got [{image.min()}, {image.max()}]"
        )
    if kind == "b":
        raise ValueError(f"Image {name!r} has dtype bool; expected uint8 or float in [0, 1]")
