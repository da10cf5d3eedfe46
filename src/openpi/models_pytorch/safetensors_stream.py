"""Writing a safetensors file tensor by tensor, so that only the tensor being written is in memory."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

Shape = tuple[int, ...]

_SAFETENSORS_DTYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "F32",
    np.dtype(ml_dtypes.bfloat16): "BF16",
}


class SafetensorsStreamWriter:
    """Writes a safetensors file whose tensors (names, shapes, dtypes) are declared up front, one tensor at a time,
    so that only the tensor being written needs to be in memory. Written to a temporary name, renamed on success."""

    def __init__(self, path: Path, entries: Sequence[tuple[str, Shape, np.dtype]], metadata: dict[str, str]) -> None:
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        for key, shape, dtype in entries:
            size = math.prod(shape) * dtype.itemsize
            header[key] = {
                "dtype": _SAFETENSORS_DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._path = path
        self._partial = path.with_name(path.name + ".partial")
        self._pending = list(reversed(entries))
        self._file = self._partial.open("wb")
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)

    def write(self, key: str, array: np.ndarray) -> None:
        expected = self._pending.pop()
        if (key, array.shape, array.dtype) != expected:
            raise RuntimeError(f"Tensor {key} {array.shape} {array.dtype} written where {expected} was declared")
        self._file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)

    def close(self) -> None:
        self._file.close()
        if self._pending:
            self._partial.unlink()
            raise RuntimeError(f"{len(self._pending)} declared tensors were never written, e.g. {self._pending[-1][0]}")
        self._partial.replace(self._path)

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)
