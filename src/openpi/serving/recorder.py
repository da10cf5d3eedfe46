"""Saving the frames a policy server receives and sends, for later inspection.

Each request is stored as ``<connection>-<index>.request.msgpack`` (the raw frame as received; ``.txt`` for a text
frame) next to its answer ``<connection>-<index>.reply.msgpack`` or, when the server answered with an error,
``<connection>-<index>.error.txt``. :func:`read_records` loads them back.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from openpi.serving import msgpack_numpy

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Record:
    """One recorded exchange.

    Attributes:
        name: ``<connection>-<index>``, ordering records by connection then arrival.
        request: the decoded observation; the raw bytes or text when the frame could not be decoded.
        reply: the decoded reply, or None when the server answered with an error.
        error: the error text the client received, or None.
    """

    name: str
    request: Any
    reply: dict | None
    error: str | None


class RequestRecorder:
    """Writes every request frame and the server's answer to ``directory``, up to ``max_bytes`` in all."""

    def __init__(self, directory: str | Path, max_bytes: int | None = 1 << 30) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.written_bytes = 0
        logger.info("Recording requests and replies to %s (cap %s bytes)", self.directory, max_bytes)

    def record(self, connection_id: int, index: int, request: bytes | str, answer: bytes | str) -> None:
        """Saves one request frame and the frame sent back (bytes: a reply, text: an error); once the cap would
        be exceeded, records nothing more (and says so once)."""
        size = len(request) + len(answer)
        if self.max_bytes is not None and self.written_bytes + size > self.max_bytes:
            if self.written_bytes <= self.max_bytes:
                logger.warning("Recording stopped: %s holds %d bytes, the cap", self.directory, self.written_bytes)
                self.written_bytes = self.max_bytes + 1
            return
        self.written_bytes += size
        stem = f"{connection_id:04d}-{index:06d}"
        _write_frame(self.directory / f"{stem}.request", request)
        _write_frame(self.directory / (f"{stem}.reply" if isinstance(answer, bytes) else f"{stem}.error"), answer)


def read_records(directory: str | Path) -> list[Record]:
    """Loads every record under ``directory``, sorted by name."""
    directory = Path(directory)
    stems = sorted({path.name.split(".", 1)[0] for path in directory.glob("*.request.*")})
    return [_read_record(directory, stem) for stem in stems]


def _write_frame(base: Path, frame: bytes | str) -> None:
    """Writes a binary frame to ``<base>.msgpack`` and a text frame to ``<base>.txt``."""
    if isinstance(frame, bytes):
        base.with_name(f"{base.name}.msgpack").write_bytes(frame)
    else:
        base.with_name(f"{base.name}.txt").write_text(frame)


def _read_record(directory: Path, stem: str) -> Record:
    binary_request = directory / f"{stem}.request.msgpack"
    if binary_request.exists():
        raw = binary_request.read_bytes()
        try:
            request = msgpack_numpy.unpackb(raw)
        except ValueError:
            request = raw
    else:
        request = (directory / f"{stem}.request.txt").read_text()
    reply_path = directory / f"{stem}.reply.msgpack"
    reply = msgpack_numpy.unpackb(reply_path.read_bytes()) if reply_path.exists() else None
    error_path = directory / f"{stem}.error.txt"
    error = error_path.read_text() if error_path.exists() else None
    return Record(name=stem, request=request, reply=reply, error=error)
