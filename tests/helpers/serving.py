"""Serving helpers shared by the tests: a policy that echoes the state, and a raw websocket client."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import numpy as np
import websockets.exceptions
import websockets.sync.client

from openpi.serving import msgpack_numpy

HORIZON = 4


class EchoPolicy:
    """Answers ``state [8] float32`` with a chunk repeating the state; records how many calls overlap."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.metadata = {"action_horizon": HORIZON, "name": "echo"}
        self.delay_s = delay_s
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def infer(self, obs: dict) -> dict:
        state = obs["state"]
        if state.shape != (8,) or state.dtype != np.float32:
            raise ValueError(f"'state' must be float32 of shape (8,), got {state.dtype} {state.shape}")
        if obs.get("explode"):
            raise RuntimeError("model blew up")
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay_s)
        with self._lock:
            self.active -= 1
        return {"actions": np.tile(state, (HORIZON, 1)), "state": state}


@contextlib.contextmanager
def open_connection(port: int, **kwargs) -> Iterator[tuple[websockets.sync.client.ClientConnection, dict]]:
    with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, **kwargs) as conn:
        yield conn, msgpack_numpy.unpackb(conn.recv(timeout=10))


def round_trip(conn, obs: dict) -> dict | str:
    conn.send(msgpack_numpy.packb(obs))
    reply = conn.recv(timeout=10)
    return reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply)


def state_vector(value: float) -> np.ndarray:
    return np.full(8, value, np.float32)
