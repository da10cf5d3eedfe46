"""What one client may cost the server: the limits on connections, frames and bytes, and the inbox that holds a
connection's unanswered frames within them.

Every frame a client sends is held until its reply is sent. A client that keeps sending without reading its replies
(a flood, or a robot whose control loop stalled on its side) reaches ``max_queued_frames`` or
``max_connection_bytes`` of unanswered frames and is disconnected (close code 1008, the reason naming the limit);
its queued frames never reach the model. The server never holds more than those for one client, and a client that
floods cannot take the model's time from the others.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Per-server and per-connection bounds (the defaults suit a fleet of robots sending a few MB per observation)."""

    max_connections: int = 64
    """Open websocket connections; further handshakes are refused with HTTP 503."""
    max_message_bytes: int = 64 * MIB
    """Largest frame; a larger one closes the connection with 1009, as the websocket protocol prescribes."""
    max_queued_frames: int = 4
    """Unanswered frames one connection may hold (the one being answered included)."""
    max_connection_bytes: int = 128 * MIB
    """Bytes of unanswered frames one connection may hold."""
    max_frame_keys: int = 1024
    """Map entries and list items one frame may decode to (an array counts as one)."""

    def __post_init__(self) -> None:
        fields = dataclasses.asdict(self)
        if any(not isinstance(value, int) or value < 1 for value in fields.values()):
            raise ValueError(f"Server limits must be positive integers, got {fields}")
        if self.max_connection_bytes < self.max_message_bytes:
            raise ValueError(
                f"max_connection_bytes ({self.max_connection_bytes}) must hold at least one frame of "
                f"max_message_bytes ({self.max_message_bytes})"
            )

    @property
    def memory_bound_bytes(self) -> int:
        """The most client data the server holds at once: each connection's unanswered frames plus two frames in
        transit (one being received, one waiting to be read)."""
        return self.max_connections * (self.max_connection_bytes + 2 * self.max_message_bytes)


class ConnectionInbox:
    """The frames one connection sent that are not answered yet, in order, within the limits."""

    def __init__(self, limits: ServerLimits) -> None:
        self._limits = limits
        self._queued: collections.deque[bytes | str] = collections.deque()
        self._held_frames = 0  # queued or being answered
        self._held_bytes = 0
        self._changed = asyncio.Event()
        self._closed = False

    def admit(self, frame: bytes | str) -> str | None:
        """Queues ``frame``, or returns why not: the limit holding it would exceed (short enough for a close
        reason)."""
        size = len(frame)
        if self._held_frames + 1 > self._limits.max_queued_frames:
            return f"{self._held_frames + 1} unanswered requests, limit {self._limits.max_queued_frames}"
        if self._held_bytes + size > self._limits.max_connection_bytes:
            held, limit = _size(self._held_bytes + size), _size(self._limits.max_connection_bytes)
            return f"{held} of unanswered requests, limit {limit}"
        self._queued.append(frame)
        self._held_frames += 1
        self._held_bytes += size
        self._changed.set()
        return None

    async def next(self) -> bytes | str | None:
        """The oldest queued frame (held until :meth:`answered`), or None once closed with nothing queued."""
        while not self._queued:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        return self._queued.popleft()

    def answered(self, frame: bytes | str) -> None:
        """Releases a frame returned by :meth:`next`."""
        self._held_frames -= 1
        self._held_bytes -= len(frame)

    def close(self, *, discard: bool) -> None:
        """No more frames arrive; with ``discard`` the queued ones are dropped (the client is gone)."""
        if discard:
            for frame in self._queued:
                self.answered(frame)
            self._queued.clear()
        self._closed = True
        self._changed.set()


def _size(num_bytes: int) -> str:
    return f"{num_bytes / MIB:.1f} MiB" if num_bytes >= MIB else f"{num_bytes / 1024:.1f} KiB"
