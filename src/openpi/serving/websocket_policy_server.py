"""A websocket server that answers observations with action chunks, speaking the published ``openpi-client`` protocol.

Protocol (per connection):

1. On connect the server sends the policy metadata as one binary msgpack frame (:mod:`openpi.serving.msgpack_numpy`).
2. Each binary frame the client sends is an observation dict. The server answers with a binary frame holding the
   policy's output dict plus ``server_timing``: ``infer_ms`` (the model call that answered it), ``queue_ms`` (time
   waiting for the inference worker, busy with other clients' requests), ``batch_size`` (requests answered by that
   call; see :mod:`openpi.serving.batching`) and, from the second request on, ``prev_total_ms`` (receive-to-sent
   time of the previous request on this connection).
3. A request that cannot be answered (undecodable frame, text frame, missing or unknown key, wrong shape or dtype,
   failing inference) gets a *text* frame describing the problem; the published client raises it as an error. The
   connection stays open for the next request.

``GET /healthz`` answers ``200 OK`` once the server is ready: with a ``warmup`` callable, ``503`` until it has run
on the inference thread (requests that arrive meanwhile wait behind it). With an API key, websocket handshakes
without exactly one header ``Authorization: Api-Key <key>`` are refused with 401. The bounds on connections, frame
sizes and unanswered frames are :class:`~openpi.serving.connection_limits.ServerLimits`.

Inference runs on one dedicated worker thread, so the model sees one call at a time while every connection's network
I/O stays on the event loop: a slow or silent client never delays another client's replies beyond the shared model.
With ``max_batch > 1`` the requests that queue while the model is busy are answered by one batched call.

:meth:`WebsocketPolicyServer.close` with a timeout (what SIGTERM and SIGINT do) stops accepting connections, answers
the requests already received for up to that long, and closes every connection with code 1001 and a reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import http
import itertools
import logging
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import websockets.asyncio.server
import websockets.exceptions
import websockets.frames
import websockets.http11

from openpi.serving import msgpack_numpy
from openpi.serving.batching import INPUT_ERRORS, BatchingInferrer, ServablePolicy
from openpi.serving.connection_limits import ConnectionInbox, PipeliningThrottle, ServerLimits
from openpi.serving.recorder import RequestRecorder

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
SHUTDOWN_REASON = "server shutting down"


class WebsocketPolicyServer:
    """Serves ``policy`` over websocket; see the module docstring for the protocol."""

    def __init__(
        self,
        policy: ServablePolicy,
        host: str = "0.0.0.0",
        port: int = 8000,
        *,
        metadata: dict[str, Any] | None = None,
        api_key: str | None = None,
        limits: ServerLimits | None = None,
        recorder: RequestRecorder | None = None,
        max_batch: int = 1,
        batch_window_ms: float = 0.0,
        warmup: Callable[[], Any] | None = None,
        shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    ) -> None:
        """Args:
        policy: answers ``infer(obs)`` (and, for batching, ``prepare(obs)`` and ``infer_prepared(prepared)``);
            model calls come from a single worker thread, one at a time.
        host, port: where to listen; port 0 picks a free port (read it from :attr:`port` after :meth:`start`).
        metadata: sent to every client on connect; defaults to ``policy.metadata``.
        api_key: when set, clients must send ``Authorization: Api-Key <api_key>``.
        limits: connections, frame size, unanswered frames and bytes per connection, keys per frame.
        recorder: saves every request and answer when given.
        max_batch: most requests answered by one model call (1: no batching).
        batch_window_ms: how long a batch waits for more requests before it runs (0: only those already queued).
        warmup: run on the inference thread before the server reports healthy (e.g. ``Policy.warmup``).
        shutdown_timeout_s: on SIGTERM/SIGINT, how long the requests already received may take to be answered.
        """
        self._policy = policy
        self._host = host
        self.port = port
        self._metadata_frame = msgpack_numpy.packb(policy.metadata if metadata is None else metadata)
        self._api_key = api_key
        self.limits = limits or ServerLimits()
        self._recorder = recorder
        self._connection_ids = itertools.count(1)
        self._inferrer = BatchingInferrer(policy, max_batch=max_batch, window_ms=batch_window_ms)
        self._warmup = warmup
        self._warmup_task: asyncio.Task | None = None
        self._shutdown_timeout_s = shutdown_timeout_s
        self.ready = warmup is None
        # Frames are decoded here, off the event loop and not queued behind inference.
        self._decoder = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="policy-decode")
        self._server: websockets.asyncio.server.Server | None = None
        self._readers: set[asyncio.Task] = set()
        self._answerers: set[asyncio.Task] = set()
        self._closing = False

    async def start(self) -> None:
        """Starts listening; sets :attr:`port` to the bound port."""
        self._server = await websockets.asyncio.server.serve(
            self._handle_connection,
            self._host,
            self.port,
            compression=None,
            max_size=self.limits.max_message_bytes,
            max_queue=0,  # one frame at most waits in websockets; the connection's inbox holds them within the limits
            process_request=self._check_request,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._inferrer.start()
        if self._warmup is not None:
            self._warmup_task = asyncio.get_running_loop().create_task(self._warm_up())
        logger.info("Policy server listening on %s:%d", self._host, self.port)

    async def close(self, timeout_s: float = 0.0) -> None:
        """Stops accepting connections and reading frames, answers the requests already received for up to
        ``timeout_s``, then closes every connection with code 1001 and stops the inference worker."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self._closing = True
        server.close(close_connections=False)
        for reader in list(self._readers):
            reader.cancel()
        if self._answerers:
            await asyncio.wait(set(self._answerers), timeout=timeout_s)
        unanswered = [answerer for answerer in self._answerers if not answerer.done()]
        if unanswered:
            logger.warning("Closing %d connection(s) with requests unanswered after %.1f s", len(unanswered), timeout_s)
        for answerer in unanswered:
            answerer.cancel()
        await server.wait_closed()  # each handler closes its connection with 1001 once its answerer is done
        if self._warmup_task is not None:
            await asyncio.gather(self._warmup_task, return_exceptions=True)
        await self._inferrer.close()
        self._decoder.shutdown(wait=True)

    async def run(self) -> None:
        """Serves until SIGINT (Ctrl-C) or SIGTERM, then shuts down gracefully (:meth:`close` with the shutdown
        timeout) and returns."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        try:
            await stop.wait()
            logger.info("Shutting down: answering the requests received (up to %.1f s)", self._shutdown_timeout_s)
        finally:
            await self.close(self._shutdown_timeout_s)
        logger.info("Stopped")

    def serve_forever(self) -> None:
        """Blocking entry point: serves until SIGINT (Ctrl-C) or SIGTERM."""
        asyncio.run(self.run())

    @contextlib.contextmanager
    def running_in_background(self) -> Iterator[int]:
        """Serves from a background thread for the duration of the ``with`` block; yields the bound port."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="policy-server", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result()
            yield self.port
        finally:
            asyncio.run_coroutine_threadsafe(self.close(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    async def _warm_up(self) -> None:
        start = time.perf_counter()
        try:
            await self._inferrer.run_on_worker(self._warmup)
        except Exception:
            logger.exception("Warm-up failed; /healthz keeps answering 503")
            return
        self.ready = True
        logger.info("Warm-up done in %.1f s; ready", time.perf_counter() - start)

    def _check_request(
        self, connection: websockets.asyncio.server.ServerConnection, request: websockets.http11.Request
    ) -> websockets.http11.Response | None:
        """Answers health checks, refuses handshakes without the API key or beyond the connection limit; None lets the
        handshake proceed."""
        if urllib.parse.urlsplit(request.path).path == HEALTH_PATH:
            if not self.ready:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Warming up\n")
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._api_key is not None and not self._has_api_key(request.headers.get_all("Authorization")):
            logger.warning("Refused connection from %s: missing or wrong API key", connection.remote_address)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Missing or invalid API key\n")
        if self._server is not None and len(self._server.connections) >= self.limits.max_connections:
            limit = self.limits.max_connections
            logger.warning("Refused connection from %s: %d connections open", connection.remote_address, limit)
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE, f"Too many connections (limit {self.limits.max_connections})\n"
            )
        return None

    def _has_api_key(self, authorization: list[str]) -> bool:
        """Exactly one ``Authorization`` header, holding the key (several are refused, not guessed between)."""
        expected = f"Api-Key {self._api_key}"
        return len(authorization) == 1 and hmac.compare_digest(authorization[0].encode(), expected.encode())

    async def _handle_connection(self, connection: websockets.asyncio.server.ServerConnection) -> None:
        connection_id = next(self._connection_ids)
        logger.info("Connection %d opened from %s", connection_id, connection.remote_address)
        inbox = ConnectionInbox(self.limits)
        try:
            await connection.send(self._metadata_frame)
        except websockets.exceptions.ConnectionClosed:
            return
        reader = asyncio.create_task(self._read(connection, connection_id, inbox))
        answerer = asyncio.create_task(self._answer_all(connection, connection_id, inbox))
        self._readers.add(reader)
        self._answerers.add(answerer)
        if self._closing:  # opened while the server was closing: nothing is read
            reader.cancel()
        try:
            await asyncio.wait({reader})
            lost = not reader.cancelled() and reader.result()
            if reader.cancelled():  # a shutdown stopped reading before the reader ran
                inbox.close(discard=False)
            if lost:  # the client is gone or was disconnected: nothing it sent is answered
                answerer.cancel()
            await asyncio.gather(answerer, return_exceptions=True)
            if not lost:  # reading stopped for a shutdown, and every request received is answered
                await _close(connection, websockets.frames.CloseCode.GOING_AWAY, SHUTDOWN_REASON)
        finally:
            reader.cancel()
            answerer.cancel()
            self._readers.discard(reader)
            self._answerers.discard(answerer)
            logger.info("Connection %d closed (%s)", connection_id, connection.close_reason or connection.state.name)

    async def _read(
        self, connection: websockets.asyncio.server.ServerConnection, connection_id: int, inbox: ConnectionInbox
    ) -> bool:
        """Moves frames into ``inbox`` until the connection closes (True: it was lost) or a shutdown cancels reading
        (False). A client that does not wait for its replies is throttled; one over its limits is disconnected with
        1008."""
        throttle = PipeliningThrottle()
        try:
            async for frame in connection:
                refused = inbox.admit(frame)
                if refused is not None:
                    logger.warning("Disconnecting connection %d: %s", connection_id, refused)
                    inbox.close(discard=True)
                    await _close(connection, websockets.frames.CloseCode.POLICY_VIOLATION, f"{refused}; read replies")
                    break
                pause_s = throttle.pause_s(inbox.held_frames)
                if pause_s:
                    logger.warning(
                        "Connection %d sent a request before its previous reply; reading it again %.2f s after its "
                        "requests are answered",
                        connection_id,
                        pause_s,
                    )
                    await inbox.all_answered()
                    await asyncio.sleep(pause_s)
        except websockets.exceptions.ConnectionClosed:
            pass
        except asyncio.CancelledError:
            inbox.close(discard=False)
            return False
        inbox.close(discard=True)
        return True

    async def _answer_all(
        self, connection: websockets.asyncio.server.ServerConnection, connection_id: int, inbox: ConnectionInbox
    ) -> None:
        """Answers the inbox's frames in order until it closes."""
        prev_total_ms: float | None = None
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            for index in itertools.count():
                request = await inbox.next()
                if request is None:
                    return
                received = time.perf_counter()
                answer = await self._answer(request, prev_total_ms)
                await connection.send(answer)
                inbox.answered(request)
                if self._recorder is not None:
                    await asyncio.to_thread(self._recorder.record, connection_id, index, request, answer)
                prev_total_ms = (time.perf_counter() - received) * 1000.0

    async def _answer(self, request: bytes | str, prev_total_ms: float | None) -> bytes | str:
        """Returns the reply frame for one request: msgpack bytes, or the error text."""
        loop = asyncio.get_running_loop()
        try:
            obs = await loop.run_in_executor(self._decoder, _decode_observation, request, self.limits.max_frame_keys)
        except ValueError as e:
            logger.warning("Undecodable request: %s", e)
            return f"Invalid request: {e}"
        try:
            result, timing = await self._inferrer.infer(obs)
        except INPUT_ERRORS as e:
            logger.warning("Invalid observation: %s: %s", type(e).__name__, e)
            return f"Invalid observation: {_describe(e)}"
        except Exception as e:
            logger.exception("Inference failed")
            return f"Inference failed: {type(e).__name__}: {_describe(e)}"
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        try:
            return msgpack_numpy.packb({**result, "server_timing": timing})
        except TypeError as e:
            logger.exception("Cannot serialise the policy output")
            return f"Inference failed: the policy output cannot be serialised: {e}"


async def _close(connection: websockets.asyncio.server.ServerConnection, code: int, reason: str) -> None:
    """Closes ``connection``, reading and discarding what the client still sends meanwhile: a frame left unread
    would hold the transport paused, and the client's closing frame behind it."""
    closing = asyncio.ensure_future(connection.close(code, reason))
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        async for _ in connection:
            pass
    await closing


def _decode_observation(frame: bytes | str, max_keys: int) -> dict:
    if isinstance(frame, str):
        raise ValueError("expected a binary msgpack frame holding the observation, got a text frame")
    try:
        obs = msgpack_numpy.unpackb(frame, max_entries=max_keys)
    except msgpack_numpy.TooManyEntries as e:
        raise ValueError(f"{e} (limit: --max-frame-keys)") from e
    if not isinstance(obs, dict):
        raise ValueError(f"the observation must be a msgpack map (dict), got {type(obs).__name__}")
    return obs


def _describe(error: Exception) -> str:
    """The exception's message; a bare KeyError (whose message is just the key) becomes "missing key '<key>'"."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        return f"missing key {error.args[0]!r}"
    return str(error)
