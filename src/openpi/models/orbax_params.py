"""Reading orbax parameter trees (the ``params`` folder of a JAX checkpoint) leaf by leaf, as numpy arrays."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openpi.models.param_layout import CheckpointMismatchError, Shape


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """Shape and dtype of a stored leaf, and its key path inside the orbax tree (wrappers included)."""

    shape: Shape
    dtype: np.dtype
    stored_path: tuple[str, ...]


def resolve_params_dir(checkpoint_dir: str | os.PathLike) -> Path:
    """``<checkpoint>/params`` when it exists, else ``checkpoint_dir`` itself when it is an orbax tree."""
    checkpoint_dir = Path(checkpoint_dir)
    for candidate in (checkpoint_dir / "params", checkpoint_dir):
        if (candidate / "_METADATA").is_file():
            return candidate
    raise FileNotFoundError(f"No orbax parameter tree at {checkpoint_dir}/params (nor at {checkpoint_dir})")


def flatten_tree(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            yield from flatten_tree(value, path)
        else:
            yield path, value


def _clean_path(stored: tuple[str, ...], strip_root: bool, wrapped: bool) -> str:
    path = stored[1:] if strip_root else stored
    return "/".join(path[:-1] if wrapped else path)


def read_param_metadata(params_dir: str | os.PathLike) -> dict[str, ParamInfo]:
    """Shapes and dtypes of every leaf, keyed by ``/``-joined path, without reading any weight.

    The ``params`` root and the per-leaf ``value`` wrappers of training checkpoints are removed from the keys.
    """
    import orbax.checkpoint as ocp

    try:
        tree = ocp.PyTreeCheckpointer().metadata(Path(params_dir).absolute()).item_metadata.tree
    except Exception as e:  # orbax reports damaged metadata as whatever its parser hit
        raise CheckpointMismatchError(
            f"Cannot read the orbax metadata of {params_dir} ({type(e).__name__}: {e}); the checkpoint is incomplete "
            "or damaged"
        ) from e
    leaves = list(flatten_tree(tree))
    if not leaves:
        raise CheckpointMismatchError(f"The orbax tree at {params_dir} holds no parameters")
    strip_root = all(path[0] == "params" for path, _ in leaves)
    wrapped = all(path[-1] == "value" for path, _ in leaves)
    return {
        _clean_path(path, strip_root, wrapped): ParamInfo(tuple(meta.shape), np.dtype(meta.dtype), path)
        for path, meta in leaves
    }


def _nest(path: Sequence[str], leaf: Any) -> dict[str, Any]:
    tree = leaf
    for key in reversed(path):
        tree = {key: tree}
    return tree


def read_leaves(params_dir: Path, stored_paths: Sequence[tuple[str, ...]]) -> list[np.ndarray]:
    """Reads only the given leaves as numpy arrays."""
    import orbax.checkpoint as ocp

    item: dict[str, Any] = {}
    restore_args: dict[str, Any] = {}
    for path in stored_paths:
        _merge(item, _nest(path, 0))
        _merge(restore_args, _nest(path, ocp.RestoreArgs(restore_type=np.ndarray)))
    restored = ocp.PyTreeCheckpointer().restore(
        params_dir.absolute(), args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
    )
    return [functools.reduce(lambda node, key: node[key], path, restored) for path in stored_paths]


def _merge(into: dict[str, Any], tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        if isinstance(value, dict) and key in into:
            _merge(into[key], value)
        else:
            into[key] = value


def load_jax_params(params_dir: str | os.PathLike) -> dict[str, Any]:
    """The whole parameter tree as a nested dict of numpy arrays, ``params`` root and ``value`` wrappers removed.

    Holds every weight in memory at once; :func:`read_leaves` reads the leaves one at a time instead.
    """
    params_dir = Path(params_dir)
    infos = read_param_metadata(params_dir)
    arrays = read_leaves(params_dir, [info.stored_path for info in infos.values()])
    tree: dict[str, Any] = {}
    for path, array in zip(infos, arrays, strict=True):
        _merge(tree, _nest(path.split("/"), array))
    return tree


def flatten_params(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Nested params -> ``{"a/b/c": array}``."""
    return {"/".join(path): leaf for path, leaf in flatten_tree(tree)}
