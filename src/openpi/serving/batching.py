"""Dynamic batching: requests that arrive while the model is busy run together in its next forward.

Each request is first prepared on its own (``policy.prepare``: the input contract and the input transforms), on a
preparation thread while the model serves others; a request that fails there gets its error at once and never joins a
batch. One consumer takes the prepared requests that queue (up to ``max_batch``; after waiting ``window_ms`` for more
when that is set) and runs them on the single inference thread through ``policy.infer_prepared``. With
``window_ms = 0`` a lone client never waits for a batch to fill: batching only groups requests that would otherwise
have queued behind each other. A policy without ``prepare`` is served one request at a time through ``infer``.

A batch of prepared requests that still raises an input error is rerun one request at a time (each reply then reports
``batch_size`` 1: the call that actually answered it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# Exceptions a policy raises for an observation it cannot use; other exceptions are server errors.
INPUT_ERRORS = (KeyError, ValueError, TypeError, IndexError)
PREPARING_THREADS = 2


class ServablePolicy(Protocol):
    """What the server needs from a policy. Batching also needs ``prepare(obs) -> prepared`` (raises an input error
    for a bad observation) and ``infer_prepared([prepared, ...]) -> [reply, ...]`` (one model call)."""

    def infer(self, obs: dict) -> dict: ...

    @property
    def metadata(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class _Request:
    item: Any  # the prepared observation, or the observation for a policy without ``prepare``
    future: asyncio.Future
    submitted: float


class BatchingInferrer:
    """Prepares each request on its own and runs ``policy`` on one worker thread, batching queued requests; see the
    module docstring."""

    def __init__(self, policy: ServablePolicy, *, max_batch: int = 1, window_ms: float = 0.0) -> None:
        if max_batch < 1 or window_ms < 0:
            raise ValueError(f"Need max_batch >= 1 and window_ms >= 0, got {max_batch}, {window_ms}")
        self._policy = policy
        prepare, infer_prepared = getattr(policy, "prepare", None), getattr(policy, "infer_prepared", None)
        batching = prepare is not None and infer_prepared is not None
        self._prepare = prepare if batching else None
        self._infer_prepared = infer_prepared if batching else None
        self.max_batch = max_batch if batching else 1
        self.window_s = window_ms / 1000.0
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        self._preparers = concurrent.futures.ThreadPoolExecutor(PREPARING_THREADS, thread_name_prefix="policy-prepare")
        self._queue: asyncio.Queue[_Request] | None = None
        self._consumer: asyncio.Task | None = None

    def start(self) -> None:
        """Starts the consumer on the running event loop."""
        self._queue = asyncio.Queue()
        self._consumer = asyncio.get_running_loop().create_task(self._consume())

    async def close(self) -> None:
        """Stops the consumer and the inference thread (requests still queued are cancelled)."""
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
            self._consumer = None
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait().future.cancel()
        self._executor.shutdown(wait=True)
        self._preparers.shutdown(wait=True)

    async def run_on_worker(self, function: Callable[[], Any]) -> Any:
        """Runs ``function`` on the inference thread (queued requests wait behind it)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    async def infer(self, obs: dict) -> tuple[dict, dict[str, float]]:
        """Returns the policy's reply to ``obs`` and its timing: ``queue_ms`` (waiting for the model),
        ``infer_ms`` (the forward that answered it), ``batch_size`` (requests in that forward) and, from a policy that
        reports them, ``prefix_ms`` / ``denoise_ms`` (that forward's split).

        Raises what the policy raised for this request; an observation ``prepare`` refuses never reaches the model.
        """
        if self._queue is None:
            raise RuntimeError("BatchingInferrer.start() was not called")
        loop = asyncio.get_running_loop()
        item = obs if self._prepare is None else await loop.run_in_executor(self._preparers, self._prepare, obs)
        future = loop.create_future()
        await self._queue.put(_Request(item, future, time.perf_counter()))
        return await future

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            outcomes = await loop.run_in_executor(self._executor, self._run, [r.item for r in batch])
            for request, (outcome, infer_ms, started, batch_size) in zip(batch, outcomes, strict=True):
                if request.future.done():  # the client went away
                    continue
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    timing = {"queue_ms": (started - request.submitted) * 1000.0, "infer_ms": infer_ms}
                    request.future.set_result((outcome, {**timing, **_model_timing(outcome), "batch_size": batch_size}))

    async def _collect(self) -> list[_Request]:
        """The next batch: the first queued request, more arriving within the window, and all others queued."""
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    def _run(self, items: Sequence[Any]) -> list[tuple[Any, float, float, int]]:
        """On the inference thread: ``(reply or exception, infer_ms, start time, batch size)`` per request."""
        if self._infer_prepared is None:
            return [self._call(self._policy.infer, item) for item in items]
        if len(items) > 1:
            started = time.perf_counter()
            try:
                replies = self._infer_prepared(items)
            except INPUT_ERRORS as e:
                logger.warning("A batch of %d prepared requests failed (%s); answering them one by one", len(items), e)
            except Exception as e:
                return [(e, 0.0, started, len(items))] * len(items)
            else:
                infer_ms = (time.perf_counter() - started) * 1000.0
                return [(reply, infer_ms, started, len(items)) for reply in replies]
        return [self._call(lambda item: self._infer_prepared([item])[0], item) for item in items]

    @staticmethod
    def _call(function: Callable[[Any], Any], item: Any) -> tuple[Any, float, float, int]:
        started = time.perf_counter()
        try:
            reply = function(item)
        except Exception as e:
            return e, (time.perf_counter() - started) * 1000.0, started, 1
        return reply, (time.perf_counter() - started) * 1000.0, started, 1


def _model_timing(reply: Any) -> dict[str, float]:
    """The model's own split of the call (``prefix_ms``, ``denoise_ms``) when the policy reports one."""
    timing = reply.get("policy_timing", {}) if isinstance(reply, dict) else {}
    return {key: float(timing[key]) for key in ("prefix_ms", "denoise_ms") if key in timing}
