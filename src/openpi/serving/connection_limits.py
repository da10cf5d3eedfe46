"""What one client may cost the server: the limits on connections, frames and bytes, the inbox that holds a
connection's unanswered frames within them, and the throttle on clients that do not wait for their replies.

Every frame a client sends is held until its reply is sent. A client that sends a request before the previous one
was answered (it does not wait for its replies: a flood, or a client whose loop stalled on its side) is throttled:
the server reads nothing more from it until its requests are answered and then for a pause of :data:`FIRST_PAUSE_S`,
twice as long each time it does so again (up to :data:`MAX_PAUSE_S`; :data:`FORGIVEN_AFTER` requests that each
waited for the previous reply clear the record), so that its frames cannot take the model's and the CPU's time from
the others. Its further frames wait in the network buffers, not in the server. A client that reaches
``max_queued_frames`` or ``max_connection_bytes`` of unanswered frames all the same is disconnected (close code 1008,
the reason naming the limit); its queued frames never reach the model.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses

from openpi.serving.batching import PREPARING_THREADS

MIB = 2**20
# Preparing a request (resizing its cameras) holds up to this many copies of its frame's size: a uint8 copy, the black
# image of an absent camera, the resizer's own buffer, with a margin.
PREPARATION_COPIES = 4
FIRST_PAUSE_S = 1.0
MAX_PAUSE_S = 60.0
FORGIVEN_AFTER = 3  # requests in a row that each waited for the previous reply


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

    def memory_bound_bytes(self, connections: int | None = None, frame_bytes: int | None = None) -> int:
        """The most memory client data takes at once, with ``connections`` open (default: the most allowed) sending
        frames of at most ``frame_bytes`` (default: the largest allowed): each connection's unanswered frames, two
        frames in transit (one being received, one waiting to be read), and the copies of the images a request's
        preparation makes (:data:`PREPARATION_COPIES` frames on each preparing thread)."""
        frame = min(frame_bytes or self.max_message_bytes, self.max_message_bytes)
        held = min(self.max_connection_bytes, self.max_queued_frames * frame)
        open_connections = self.max_connections if connections is None else connections
        return open_connections * (held + 2 * frame) + PREPARING_THREADS * PREPARATION_COPIES * frame


class ConnectionInbox:
    """The frames one connection sent that are not answered yet, in order, within the limits."""

    def __init__(self, limits: ServerLimits) -> None:
        self._limits = limits
        self._queued: collections.deque[bytes | str] = collections.deque()
        self._held_frames = 0  # queued or being answered
        self._held_bytes = 0
        self._arrived = asyncio.Event()
        self._released = asyncio.Event()
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
        self._arrived.set()
        return None

    async def next(self) -> bytes | str | None:
        """The oldest queued frame (held until :meth:`answered`), or None once closed with nothing queued."""
        while not self._queued:
            if self._closed:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        return self._queued.popleft()

    async def all_answered(self) -> None:
        """Returns once no frame is held (or the inbox is closed)."""
        while self._held_frames and not self._closed:
            self._released.clear()
            await self._released.wait()

    @property
    def held_frames(self) -> int:
        """Frames queued or being answered."""
        return self._held_frames

    def answered(self, frame: bytes | str) -> None:
        """Releases a frame returned by :meth:`next`."""
        self._held_frames -= 1
        self._held_bytes -= len(frame)
        self._released.set()

    def close(self, *, discard: bool) -> None:
        """No more frames arrive; with ``discard`` the queued ones are dropped (the client is gone)."""
        if discard:
            for frame in self._queued:
                self.answered(frame)
            self._queued.clear()
        self._closed = True
        self._arrived.set()
        self._released.set()


class PipeliningThrottle:
    """How long to stop reading a connection after each frame it sends (once its requests are answered): nothing
    while it waits for its replies, a pause that doubles each time it sends a request before the previous one was
    answered."""

    def __init__(self) -> None:
        self._strikes = 0
        self._waited = 0

    def pause_s(self, held_frames: int) -> float:
        """The pause after admitting a frame, given the frames the connection now holds (1: it waited)."""
        if held_frames <= 1:
            self._waited += 1
            if self._waited >= FORGIVEN_AFTER:
                self._strikes = 0
            return 0.0
        self._waited = 0
        self._strikes += 1
        return min(MAX_PAUSE_S, FIRST_PAUSE_S * 2 ** (self._strikes - 1))


def _size(num_bytes: int) -> str:
    if num_bytes >= MIB:
        return f"{num_bytes / MIB:.1f} MiB"
    return f"{num_bytes / 1024:.1f} KiB" if num_bytes >= 1024 else f"{num_bytes} B"
