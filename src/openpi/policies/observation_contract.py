"""The policy's input contract: what any observation must satisfy before a transform touches it.

Robot mappings check that their keys are present; this layer checks what holds for every robot — only the robot's
keys (``keys``; unknown ones are refused, named), arrays where arrays belong and dicts where dicts do, value types,
array dtypes and sizes, finite numbers that fit float32, image shapes and value ranges, the prompt's type and
encoding, the request options — and names the key and the problem in one ``ValueError``. Nothing is coerced
silently (an int64 image is not wrapped modulo 256).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from openpi.policies import rtc_request

MAX_DIM = 4096  # larger than any camera or state; a bigger dimension is a malformed request
MAX_NDIM = 4
MAX_NESTING = 3  # levels of dicts inside an observation whose robot declares no keys
# A request option (a bool, beside the observation) asking a pruning policy for ``kept_patch_mask`` in its reply.
KEPT_PATCHES_REQUEST_KEY = "return_kept_patches"
# Pruning budgets are the server's (set at start-up, in the metadata); a request carrying one is refused, not ignored.
BUDGET_KEYS = ("token_prune_keep_ratio", "token_prune_keep_tokens")
_ALWAYS_ALLOWED = ("prompt", KEPT_PATCHES_REQUEST_KEY, *rtc_request.RTC_KEYS)
_NUMERIC_KINDS = "biuf"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def validated_copy(obs: Any, keys: Collection[str] | None = None) -> dict:
    """A copy of ``obs`` (its nested dicts copied; transforms may modify them) that satisfies the contract.

    Args:
        obs: the observation.
        keys: the keys the robot's observation may hold besides ``prompt`` and the request options, nested ones as
            ``images/cam_high``; None accepts any key (nested at most :data:`MAX_NESTING` dicts deep).

    Raises:
        ValueError: naming the key and what is wrong with it.
    """
    if not isinstance(obs, Mapping):
        raise ValueError(f"An observation must be a dict, got {type(obs).__name__}")
    _refuse_budgets(obs)
    allowed = None if keys is None else frozenset(keys) | frozenset(_ALWAYS_ALLOWED)
    unknown: list[str] = []
    copy = _copy(obs, "", allowed, unknown)
    if unknown:
        raise ValueError(_unknown_keys_message(unknown, allowed))
    return copy


def _refuse_budgets(obs: Mapping) -> None:
    for key in BUDGET_KEYS:
        if key in obs:
            raise ValueError(
                f"{key!r} cannot be set per request: the pruning budget is the server's (start it with "
                "--token-prune-keep-ratio or --token-prune-keep-tokens; the metadata says which applies)"
            )


def _copy(obs: Mapping, prefix: str, allowed: frozenset[str] | None, unknown: list[str]) -> dict:
    copy = {}
    for key, value in obs.items():
        if not isinstance(key, str):
            raise ValueError(f"Observation keys must be strings, got {key!r} in {prefix or 'the observation'}")
        name = f"{prefix}{key}"
        if not _known(name, allowed):
            unknown.append(name)
        elif key == "prompt" and not prefix:
            copy[key] = _prompt(value)
        elif key == KEPT_PATCHES_REQUEST_KEY and not prefix:
            copy[key] = _flag(key, value)
        elif key in rtc_request.RTC_KEYS and not prefix:
            copy[key] = _rtc_field(key, value)
        elif isinstance(value, Mapping):
            copy[key] = _copy(_as_dict(name, value, allowed), f"{name}/", allowed, unknown)
        else:
            copy[key] = _array(name, value, allowed)
    return copy


def _known(name: str, allowed: frozenset[str] | None) -> bool:
    """Whether ``name`` is an allowed key or a dict on the way to one."""
    return allowed is None or name in allowed or any(key.startswith(f"{name}/") for key in allowed)


def _as_dict(name: str, value: Mapping, allowed: frozenset[str] | None) -> Mapping:
    if allowed is not None and name in allowed:
        raise ValueError(f"Observation key {name!r} must be an array, got a dict (keys {sorted(map(str, value))[:5]})")
    if allowed is None and name.count("/") >= MAX_NESTING:
        raise ValueError(f"Observation key {name!r} is nested more than {MAX_NESTING} dicts deep")
    return value


def _unknown_keys_message(unknown: list[str], allowed: frozenset[str]) -> str:
    shown = ", ".join(repr(key) for key in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    options = (KEPT_PATCHES_REQUEST_KEY, *rtc_request.RTC_KEYS)
    takes = ", ".join(repr(key) for key in sorted(allowed - frozenset(options)))
    return f"unknown key(s) {shown}; this policy takes {takes} and the request options {', '.join(options)}"


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


def _flag(name: str, value: Any) -> bool:
    """A request option: true or false, as a bool or a 0-d bool array."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype == bool:
        return bool(value)
    shape = f" of shape {value.shape}" if isinstance(value, np.ndarray) else ""
    raise ValueError(f"{name!r} must be true or false, got {type(value).__name__}{shape}")


def _rtc_field(key: str, value: Any) -> Any:
    """A real-time chunking field: ``prev_actions`` a finite ``[L, action_dim]`` array, the others options."""
    if key != rtc_request.PREV_ACTIONS_KEY:
        return rtc_request.validated_option(key, value)
    actions = np.asarray(_array(key, value, None))
    if actions.ndim != 2 or actions.dtype.kind not in "iuf":
        raise ValueError(f"{key!r} must be a numeric [steps, action_dim] array, got shape {actions.shape}")
    return actions


def _array(name: str, value: Any, allowed: frozenset[str] | None) -> Any:
    if allowed is not None and name not in allowed:  # a leaf where the robot expects a dict of keys
        inner = sorted(key for key in allowed if key.startswith(f"{name}/"))
        raise ValueError(f"Observation key {name!r} must be a dict of {inner}, got {type(value).__name__}")
    array = np.asarray(value)
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"Observation key {name!r} has dtype {array.dtype}; expected a numeric or bool array")
    if array.ndim > MAX_NDIM or any(d > MAX_DIM for d in array.shape):
        raise ValueError(f"Observation key {name!r} has an absurd shape {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"Observation key {name!r} is empty (shape {array.shape})")
    if array.dtype.kind == "f":
        _check_floats(name, array)
    if _is_image(name):
        _check_image(name, array)
    return value


def _check_floats(name: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise ValueError(f"Observation key {name!r} holds NaN or infinite values")
    if array.dtype.itemsize > 4:
        largest = float(np.abs(array).max())
        if largest > _FLOAT32_MAX:
            raise ValueError(f"Observation key {name!r} holds {largest:.3g}, which does not fit float32")


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
