"""Composable per-sample transforms: dicts of numpy arrays in, dicts of numpy arrays out.

A data pipeline is ``repack -> robot (data) transforms -> Normalize -> model transforms``; inference runs the same
inputs and then the ``outputs`` of each :class:`Group` in reverse order.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from openpi.shared import image_tools
from openpi.shared import normalize as _normalize

# What PadStatesAndActions pads to the model's action dimension.
_PADDED_KEYS = ("state", "actions")


class DataTransformFn(Protocol):
    def __call__(self, data: dict) -> dict:
        """Transforms one sample. May modify ``data`` in place and must return the result."""


@dataclasses.dataclass(frozen=True)
class Group:
    """Transforms applied to model inputs and, in reverse pipeline order, to model outputs."""

    inputs: Sequence[DataTransformFn] = ()
    outputs: Sequence[DataTransformFn] = ()

    def push(self, *, inputs: Sequence[DataTransformFn] = (), outputs: Sequence[DataTransformFn] = ()) -> Group:
        """Returns a group that runs ``inputs`` after this group's inputs and ``outputs`` before its outputs."""
        return Group(inputs=(*self.inputs, *inputs), outputs=(*outputs, *self.outputs))


@dataclasses.dataclass(frozen=True)
class CompositeTransform:
    """Applies transforms one after another."""

    transforms: Sequence[DataTransformFn]

    def __call__(self, data: dict) -> dict:
        for transform in self.transforms:
            data = transform(data)
        return data


def compose(transforms: Sequence[DataTransformFn]) -> DataTransformFn:
    """Chains ``transforms`` into one transform."""
    return CompositeTransform(tuple(transforms))


def flatten_dict(tree: Mapping[str, Any], separator: str = "/") -> dict[str, Any]:
    """Flattens nested dicts into one level with ``separator``-joined keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_dict(value, separator).items():
                flat[f"{key}{separator}{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat


def unflatten_dict(flat: Mapping[str, Any], separator: str = "/") -> dict[str, Any]:
    """Inverse of :func:`flatten_dict`: ``separator``-joined keys become nested dicts."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(separator)
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def transform_dict(patterns: Mapping[str, str | None], tree: Mapping[str, Any]) -> dict[str, Any]:
    """Renames or removes the ``/``-flattened keys of ``tree``, as upstream's ``transform_dict``.

    Each pattern is a regex that must match a whole key; the first that matches renames it to its value (which may
    use backreferences, see ``re.sub``) or removes it when the value is None. Unmatched keys stay.

    Raises:
        ValueError: two keys get the same name, or a renamed leaf would also be a node (``a`` and ``a/b``).
    """
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in patterns.items()]
    output: dict[str, Any] = {}
    for key, value in flatten_dict(tree).items():
        new_key = _renamed(key, compiled)
        if new_key is None:
            continue
        if new_key in output:
            raise ValueError(f"Key '{new_key}' already exists in output")
        output[new_key] = value
    for name, next_name in itertools.pairwise(sorted(output)):
        if next_name.startswith(name + "/"):
            raise ValueError(f"Leaf '{name}' aliases a node of '{next_name}'")
    return unflatten_dict(output)


def _renamed(key: str, patterns: Sequence[tuple[re.Pattern, str | None]]) -> str | None:
    """``key`` renamed by the first pattern matching all of it (None: removed); unchanged when none matches."""
    for regex, replacement in patterns:
        if regex.fullmatch(key):
            return None if replacement is None else regex.sub(replacement, key, count=1)
    return key


def apply_tree(
    tree: Mapping[str, Any], selector: Mapping[str, Any], fn: Callable[[Any, Any], Any], *, strict: bool = False
) -> dict[str, Any]:
    """Replaces each leaf of ``tree`` that ``selector`` holds (both ``/``-flattened) by ``fn(leaf, selector_leaf)``.

    Raises:
        ValueError: with ``strict``, ``selector`` holds a key that ``tree`` lacks.
    """
    flat, selected = flatten_dict(tree), flatten_dict(selector)
    if strict and (missing := sorted(set(selected) - set(flat))):
        raise ValueError(f"Keys {missing} not found in the data (it has {sorted(flat)})")
    return unflatten_dict({key: fn(value, selected[key]) if key in selected else value for key, value in flat.items()})


@dataclasses.dataclass(frozen=True)
class RepackTransform:
    """Renames and restructures keys.

    ``structure`` is a (nested) dict whose keys are the output keys and whose leaves are input keys; nested inputs
    are addressed with ``/``-joined paths, e.g. ``{"images": {"cam_high": "observation.images.cam_high"}}``.
    """

    structure: Mapping[str, Any]

    def __call__(self, data: dict) -> dict:
        flat = flatten_dict(data)
        return self._build(self.structure, flat)

    def _build(self, structure: Mapping[str, Any], flat: dict[str, Any]) -> dict:
        out: dict[str, Any] = {}
        for new_key, source in structure.items():
            if isinstance(source, Mapping):
                out[new_key] = self._build(source, flat)
            elif source in flat:
                out[new_key] = flat[source]
            else:
                raise KeyError(f"RepackTransform: input has no key {source!r} (for {new_key!r}); has {sorted(flat)}")
        return out


@dataclasses.dataclass(frozen=True)
class InjectDefaultPrompt:
    """Sets ``prompt`` when the sample has none and a default is configured."""

    prompt: str | None

    def __call__(self, data: dict) -> dict:
        if self.prompt is not None and "prompt" not in data:
            data["prompt"] = self.prompt
        return data


@dataclasses.dataclass(frozen=True)
class PromptFromLeRobotTask:
    """Copies the LeRobot task text (``task``, or ``task_index`` looked up in ``tasks``) into ``prompt``."""

    tasks: Mapping[int, str] | None = None

    def __call__(self, data: dict) -> dict:
        if "task" in data:
            data["prompt"] = str(data["task"])
        elif self.tasks is not None and "task_index" in data:
            task_index = int(np.asarray(data["task_index"]))
            if task_index not in self.tasks:
                raise ValueError(f"{task_index=} not found in task mapping: {dict(self.tasks)}")
            data["prompt"] = self.tasks[task_index]
        else:
            raise ValueError(f'Cannot extract prompt without "task_index" (or "task"); the sample has {sorted(data)}')
        return data


@dataclasses.dataclass(frozen=True)
class Normalize:
    """Normalises every key its statistics hold (z-score, or quantiles to [-1, 1]), as upstream: ``/``-joined keys
    address nested values; keys the sample lacks are skipped unless ``strict``. No statistics: nothing to do."""

    norm_stats: Mapping[str, _normalize.NormStats] | None
    use_quantiles: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        if self.norm_stats is not None and self.use_quantiles:
            _check_quantiles(self.norm_stats)

    def __call__(self, data: dict) -> dict:
        if self.norm_stats is None:
            return data
        return apply_tree(data, self.norm_stats, self._normalize, strict=self.strict)

    def _normalize(self, x: np.ndarray, stats: _normalize.NormStats) -> np.ndarray:
        return _normalize.normalize(x, stats, self.use_quantiles)


@dataclasses.dataclass(frozen=True)
class Unnormalize:
    """Inverse of :class:`Normalize` with the same statistics; every key they hold must be in the sample."""

    norm_stats: Mapping[str, _normalize.NormStats] | None
    use_quantiles: bool = False

    def __post_init__(self) -> None:
        if self.norm_stats is not None and self.use_quantiles:
            _check_quantiles(self.norm_stats)

    def __call__(self, data: dict) -> dict:
        if self.norm_stats is None:
            return data
        return apply_tree(data, self.norm_stats, self._unnormalize, strict=True)

    def _unnormalize(self, x: np.ndarray, stats: _normalize.NormStats) -> np.ndarray:
        return _normalize.unnormalize(x, stats, self.use_quantiles)


def _check_quantiles(norm_stats: Mapping[str, _normalize.NormStats]) -> None:
    for key, stats in flatten_dict(norm_stats).items():
        if not stats.has_quantiles:
            raise ValueError(f"Quantile normalisation needs q01 and q99, but the norm stats of {key!r} lack them")


@dataclasses.dataclass(frozen=True)
class ResizeImages:
    """Resizes every image in ``data["image"]`` (uint8 ``[H, W, 3]``) to ``height x width`` with padding, as upstream
    (:func:`openpi.shared.image_tools.resize_with_pad`)."""

    height: int
    width: int

    def __call__(self, data: dict) -> dict:
        images = {}
        for name, image in data["image"].items():
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"ResizeImages expects uint8 [H, W, 3] for {name!r}, got {image.dtype} {image.shape}")
            images[name] = image_tools.resize_with_pad(image, self.height, self.width)
        data["image"] = images
        return data


@dataclasses.dataclass(frozen=True)
class MaskImages:
    """Marks every camera absent (``image_mask`` False): the model sees no image. The blind control."""

    def __call__(self, data: dict) -> dict:
        data["image_mask"] = {name: np.False_ for name in data["image"]}
        return data


class Tokenizer(Protocol):
    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class TokenizePrompt:
    """Replaces ``prompt`` by ``tokenized_prompt`` and ``tokenized_prompt_mask``.

    With ``discrete_state_input`` (π0.5) the normalised, unpadded ``state`` is written into the prompt.
    """

    tokenizer: Tokenizer
    discrete_state_input: bool = False

    def __call__(self, data: dict) -> dict:
        if "prompt" not in data:
            raise ValueError("Prompt is required: the observation has no 'prompt' and the policy has no default prompt")
        if self.discrete_state_input and "state" not in data:
            raise ValueError("State is required: the discrete state input writes it into the prompt")
        prompt = data.pop("prompt")
        if isinstance(prompt, bytes):
            prompt = prompt.decode()
        state = np.asarray(data["state"]) if self.discrete_state_input else None
        tokens, mask = self.tokenizer.tokenize(str(prompt), state)
        data["tokenized_prompt"], data["tokenized_prompt_mask"] = tokens, mask
        return data


def pad_to_dim(
    x: np.ndarray, target_dim: int, axis: int = -1, value: float = 0.0, *, name: str = "array"
) -> np.ndarray:
    """Pads ``axis`` of ``x`` with ``value`` to ``target_dim``; raises if it is already longer (``name`` names ``x``
    in the error)."""
    x = np.asarray(x)
    current = x.shape[axis]
    if current > target_dim:
        raise ValueError(f"{name} has {current} dims in axis {axis}, more than the model's {target_dim}")
    if current == target_dim:
        return x
    padding = [(0, 0)] * x.ndim
    padding[axis] = (0, target_dim - current)
    return np.pad(x, padding, constant_values=value)


@dataclasses.dataclass(frozen=True)
class PadStatesAndActions:
    """Zero-pads the last dimension of ``state`` and ``actions`` to the model's action dimension."""

    model_action_dim: int

    def __call__(self, data: dict) -> dict:
        for key in _PADDED_KEYS:
            if key in data:
                data[key] = pad_to_dim(data[key], self.model_action_dim, name=key)
        return data


@dataclasses.dataclass(frozen=True)
class SubsampleActions:
    """Keeps every ``stride``-th action of the chunk."""

    stride: int

    def __call__(self, data: dict) -> dict:
        data["actions"] = data["actions"][:: self.stride]
        return data


@dataclasses.dataclass(frozen=True)
class DeltaActions:
    """Turns absolute actions into deltas from the current state on the dims where ``mask`` is True; a None mask
    does nothing."""

    mask: Sequence[bool] | None

    def __call__(self, data: dict) -> dict:
        return _shift_actions(data, self.mask, sign=-1.0)


@dataclasses.dataclass(frozen=True)
class AbsoluteActions:
    """Inverse of :class:`DeltaActions`: adds the current state back on the masked dims; a None mask does nothing."""

    mask: Sequence[bool] | None

    def __call__(self, data: dict) -> dict:
        return _shift_actions(data, self.mask, sign=1.0)


def _shift_actions(data: dict, mask: Sequence[bool] | None, sign: float) -> dict:
    if "actions" not in data or mask is None:
        return data
    mask_array = np.asarray(mask, dtype=bool)
    dims = len(mask_array)
    state = np.asarray(data["state"], dtype=np.float32)
    actions = np.array(data["actions"], dtype=np.float32)
    offset = np.where(mask_array, state[..., :dims], 0.0)
    actions[..., :dims] += sign * np.expand_dims(offset, -2)
    data["actions"] = actions
    return data


def make_bool_mask(*runs: int) -> tuple[bool, ...]:
    """``make_bool_mask(6, -1)`` -> six True then one False: positive runs are True, negative runs False."""
    return tuple(value for run in runs for value in [run > 0] * abs(run))


def to_uint8_hwc(image: Any, name: str = "image") -> np.ndarray:
    """Converts an image to uint8 ``[H, W, 3]``: accepts channels-first, and floats in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"{name} must be [H, W, 3] or [3, H, W], got shape {image.shape}")
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = np.transpose(image, (1, 2, 0))
    if np.issubdtype(image.dtype, np.floating):
        image = np.clip(np.round(image * 255.0), 0, 255)
    return np.ascontiguousarray(image.astype(np.uint8))


def single_arm_inputs(data: dict, state: np.ndarray, base: np.ndarray, wrist: np.ndarray) -> dict:
    """Model inputs of a one-arm robot: base and wrist cameras (the right-wrist slot is an absent camera).

    ``actions`` and ``prompt`` of ``data`` are passed through when present.
    """
    out = {
        "state": state,
        "image": {"base_0_rgb": base, "left_wrist_0_rgb": wrist, "right_wrist_0_rgb": np.zeros_like(base)},
        "image_mask": {"base_0_rgb": np.True_, "left_wrist_0_rgb": np.True_, "right_wrist_0_rgb": np.False_},
    }
    if "actions" in data:
        out["actions"] = np.asarray(data["actions"], dtype=np.float32)
    if "prompt" in data:
        out["prompt"] = data["prompt"]
    return out


def stack_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stacks per-sample (nested) dicts of arrays into one dict of batched arrays; text values become lists.

    Raises:
        ValueError: a key is missing from some samples, or the samples disagree on an array's shape.
    """
    first = samples[0]
    stacked: dict[str, Any] = {}
    for key, value in first.items():
        if any(key not in sample for sample in samples):
            raise ValueError(f"Key {key!r} is present in some samples of the batch but not in others")
        values = [sample[key] for sample in samples]
        if isinstance(value, Mapping):
            stacked[key] = stack_samples(values)
        elif isinstance(value, str | bytes):
            stacked[key] = values
        else:
            parts = [np.asarray(v) for v in values]
            shapes = {part.shape for part in parts}
            if len(shapes) != 1:
                raise ValueError(f"Samples of the batch disagree on the shape of {key!r}: {sorted(shapes)}")
            stacked[key] = np.stack(parts)
    return stacked
