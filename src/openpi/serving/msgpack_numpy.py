"""msgpack with NumPy arrays, wire-compatible with the published ``openpi-client`` package.

An array travels as a msgpack map with *binary* (bytes) keys::

    {b"__ndarray__": True, b"data": <raw C-order bytes>, b"dtype": "<f4", b"shape": [d0, d1, ...]}

and a NumPy scalar as ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": "<i8"}``. ``dtype`` is the NumPy
``dtype.str`` (byte order + kind + item size, and a unit for datetime64/timedelta64). Object, void and complex
dtypes are refused: the format carries raw bytes only, never pickles. Decoded arrays are zero-copy, read-only views of
the received message.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgpack
import numpy as np

_ARRAY_TAG = b"__ndarray__"
_SCALAR_TAG = b"__npgeneric__"
_UNSUPPORTED_KINDS = ("V", "O", "c")
# Plain numeric, bool and text dtypes as ``dtype.str`` writes them ('<f4', '|u1', '|b1', '<U12', '|S3'), and
# datetime64 / timedelta64 with their unit ('<M8[ns]', '<m8[25ms]'), which the published client round-trips too.
_DTYPE_PATTERN = re.compile(r"[<>|=][biufUS]\d{1,4}|[<>=][mM]8(\[\d{0,4}[a-zA-Z]{1,2}\])?")
# Observations are small maps of arrays: a container claiming more entries than this is junk, refused before the
# decoder allocates anything for it.
MAX_CONTAINER_LEN = 1 << 16


def packb(obj: Any) -> bytes:
    """Serialises ``obj`` (dicts, lists, scalars, strings, bytes and NumPy arrays/scalars) to msgpack bytes."""
    return msgpack.packb(obj, default=_encode_numpy, use_bin_type=True)


class TooManyEntries(ValueError):
    """A message holds more map entries and list items than the decoder was allowed to build."""


def unpackb(data: bytes, *, max_entries: int | None = None) -> Any:
    """Deserialises msgpack bytes written by :func:`packb` or by ``openpi_client.msgpack_numpy``.

    ``max_entries`` bounds the map entries and list items decoded (an encoded array or scalar counts as one): a
    message of many small containers is refused after at most that many, before its decoding costs seconds.

    Raises:
        TooManyEntries: the message holds more than ``max_entries``.
        ValueError: the bytes are not valid msgpack (every decoder failure, named), or an encoded array or scalar is
            malformed.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"Message must be bytes, got {type(data).__name__}")
    budget = None if max_entries is None else _EntryBudget(max_entries)
    try:
        return msgpack.unpackb(
            data,
            object_hook=_decode_numpy if budget is None else budget.decode_map,
            list_hook=None if budget is None else budget.decode_list,
            raw=False,
            strict_map_key=False,
            max_map_len=MAX_CONTAINER_LEN,
            max_array_len=MAX_CONTAINER_LEN,
        )
    except TooManyEntries:
        raise
    except RecursionError as e:
        raise ValueError("Message is not valid msgpack-numpy: nested too deeply") from e
    except Exception as e:  # any decoder failure is the sender's, and must never drop the connection
        raise ValueError(f"Message is not valid msgpack-numpy: {_explain(e)}") from e


class _EntryBudget:
    """Counts the entries of the maps and lists a decoder builds and refuses past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def decode_map(self, obj: dict) -> Any:
        self._spend(1 if _ARRAY_TAG in obj or _SCALAR_TAG in obj else len(obj))
        return _decode_numpy(obj)

    def decode_list(self, obj: list) -> list:
        self._spend(len(obj))
        return obj

    def _spend(self, entries: int) -> None:
        self.left -= entries
        if self.left < 0:
            raise TooManyEntries(f"the message holds more than {self.limit} keys and list items")


def _explain(error: Exception) -> str:
    """What went wrong, in words (msgpack's format errors often carry no message)."""
    if isinstance(error, msgpack.exceptions.StackError):
        return "nested too deeply"
    if isinstance(error, ValueError) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else f"{type(error).__name__} (malformed msgpack data)"


def _encode_numpy(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in _UNSUPPORTED_KINDS:
        raise TypeError(f"Cannot serialise NumPy dtype {obj.dtype} (object, void and complex are not supported)")
    if isinstance(obj, np.ndarray):
        return {_ARRAY_TAG: True, b"data": obj.tobytes(order="C"), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {_SCALAR_TAG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"Cannot serialise object of type {type(obj).__name__}")


def _decode_numpy(obj: dict) -> Any:
    if _ARRAY_TAG in obj:
        return _decode_array(obj)
    if _SCALAR_TAG in obj:
        return _decode_scalar(obj)
    return obj


def _decode_scalar(obj: dict) -> np.generic:
    dtype, data = _parse_dtype(obj.get(b"dtype")), obj.get(b"data")
    if not isinstance(data, bool | int | float | str | bytes):
        raise ValueError(f"Encoded scalar of dtype {dtype} has data of type {type(data).__name__}")
    try:
        value = dtype.type(data)
    except (OverflowError, ValueError, TypeError) as e:
        raise ValueError(f"Encoded scalar {data!r} does not fit dtype {dtype}") from e
    if dtype.kind in "iub" and value != data:  # numpy may wrap out-of-range integers instead of raising
        raise ValueError(f"Encoded scalar {data!r} does not fit dtype {dtype}")
    return value


def _decode_array(obj: dict) -> np.ndarray:
    dtype = _parse_dtype(obj.get(b"dtype"))
    shape = obj.get(b"shape")
    data = obj.get(b"data")
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"Encoded array has an invalid shape {shape!r}")
    if not isinstance(data, bytes):
        raise ValueError(f"Encoded array data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"Encoded array {dtype} {tuple(shape)} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _parse_dtype(spec: Any) -> np.dtype:
    """The dtype of a plain numeric/bool/text ``dtype.str``; anything else is refused before NumPy parses it."""
    if not isinstance(spec, str) or not _DTYPE_PATTERN.fullmatch(spec):
        raise ValueError(f"Encoded array has an unsupported dtype {spec!r} (expected e.g. '<f4', '|u1', '<U8')")
    try:
        return np.dtype(spec)
    except TypeError as e:
        raise ValueError(f"Encoded array has an invalid dtype {spec!r}") from e
