"""A blocking websocket client for ``serve_policy.py`` (the protocol of the published ``openpi-client``).

The server sends its metadata when the connection opens; each request is a msgpack-numpy observation and each reply
the policy's output, or a text frame naming what was wrong with the request.
"""

from __future__ import annotations

from typing import Any

from websockets.sync.client import ClientConnection, connect

from openpi.serving import msgpack_numpy


class PolicyRequestError(RuntimeError):
    """The server answered a request with an error text."""


class WebsocketClientPolicy:
    """``infer(obs) -> dict`` against a policy server on ``host:port``, with the published client's interface
    (``get_server_metadata()``, ``infer()``, ``reset()``); ``host`` may also be a ``ws://`` URI, then without port."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = 8000, api_key: str | None = None) -> None:
        uri = host if host.startswith("ws") else f"ws://{host}"
        uri += "" if port is None else f":{port}"
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._connection: ClientConnection = connect(uri, additional_headers=headers, compression=None, max_size=None)
        self.metadata: dict[str, Any] = msgpack_numpy.unpackb(self._connection.recv())

    def get_server_metadata(self) -> dict[str, Any]:
        """What the server sent when the connection opened."""
        return self.metadata

    def reset(self) -> None:
        """Nothing to reset: the server keeps no state per episode."""

    def infer(self, obs: dict) -> dict:
        self._connection.send(msgpack_numpy.packb(obs))
        reply = self._connection.recv()
        if isinstance(reply, str):
            raise PolicyRequestError(reply)
        return msgpack_numpy.unpackb(reply)

    def close(self) -> None:
        self._connection.close()
