"""Back-pressure and input limits: the daemon's memory use is bounded whatever clients send.

- `Admission`: at most ``max_concurrency`` inferences run at once and at most ``max_queue`` wait;
  anything beyond is refused at once with `Overloaded` (HTTP 503 + ``Retry-After``) instead of
  piling up in memory.
- `MicroBatcher`: optional dynamic batching; requests that arrive within ``max_delay`` of each other
  run as one batch of at most ``max_batch`` rows.
- `BodyLimitMiddleware`: an ASGI middleware refusing bodies over the byte limit, whether or not the
  client sent ``Content-Length``; the connection is closed after the 413, so a client still streaming
  an over-limit body cannot hold it open.
- `DrainGuard`: after SIGTERM, a request whose body has not arrived by the drain timeout gets the
  daemon's JSON 503 instead of being cancelled mid-read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any


class Overloaded(Exception):
    """The queue is full; the client should retry after ``retry_after`` seconds.

    The message counts what the limit counts: admitted requests (running, waiting for a slot, or
    still being parsed and checked), against ``max_concurrency + max_queue``.
    """

    def __init__(self, retry_after: int, admitted: int, max_concurrency: int, max_queue: int) -> None:
        super().__init__(
            f"server busy: {admitted} requests admitted, the limit of {max_concurrency} running + {max_queue} "
            f"queued (--max-concurrency, --max-queue) is reached; retry in {retry_after} s"
        )
        self.retry_after = retry_after


class DrainExpired(Exception):
    """The drain timeout passed while a request was still waiting for its body (HTTP 503)."""


class Admission:
    """A bounded count of admitted requests plus a semaphore on the ones running.

    Args:
        max_concurrency: inferences (or batches) running at once.
        max_queue: requests allowed to wait for a free slot; ``0`` means refuse when all slots are busy.
    """

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.admitted = 0
        self.running = 0
        self._slots: asyncio.Semaphore | None = None
        self._recent = collections.deque(maxlen=64)  # recent service times, for Retry-After

    @property
    def queued(self) -> int:
        return max(0, self.admitted - self.running)

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        return self._slots

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue times the recent mean service time, at least 1."""
        mean = sum(self._recent) / len(self._recent) if self._recent else 0.05
        return max(1, math.ceil(mean * (self.queued + 1) / self.max_concurrency))

    @contextlib.contextmanager
    def ticket(self):
        """Admit one request or raise `Overloaded`; the ticket is held until the response is computed."""
        if self.admitted >= self.max_concurrency + self.max_queue:
            raise Overloaded(self.retry_after(), self.admitted, self.max_concurrency, self.max_queue)
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for one of the ``max_concurrency`` execution slots."""
        semaphore = self._semaphore()
        await semaphore.acquire()
        self.running += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._recent.append(time.perf_counter() - start)
            self.running -= 1
            semaphore.release()


@dataclass
class _Pending:
    item: Any
    rows: int
    future: asyncio.Future


class MicroBatcher:
    """Groups concurrent requests into batches for one model.

    Args:
        run_batch: called in ``executor`` with the list of items; returns one result per item.
        max_batch: rows per batch (an item may carry several rows).
        max_delay_s: how long the first item of a batch waits for company.
        admission: its `Admission.slot` bounds the batches running at once.
        executor: where ``run_batch`` runs (a thread pool).
        on_batch: called with the number of rows of each batch (metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int,
        max_delay_s: float,
        admission: Admission,
        executor: Executor,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.max_delay_s = max(0.0, max_delay_s)
        self._admission = admission
        self._executor = executor
        self._on_batch = on_batch
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._running: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._closed = False

    async def submit(self, item: Any, rows: int = 1) -> Any:
        """Queue ``item`` and wait for its result (exceptions of its batch are raised here)."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, rows, future))
        self._wakeup.set()
        return await future

    def _pending_rows(self) -> int:
        return sum(p.rows for p in self._pending)

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = time.perf_counter() + self.max_delay_s
            while self._pending_rows() < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [self._pending.popleft()]
            rows = batch[0].rows
            while self._pending and rows + self._pending[0].rows <= self.max_batch:
                rows += self._pending[0].rows
                batch.append(self._pending.popleft())
            # Take an execution slot before forming the next batch: back-pressure reaches the queue.
            await self._admission._semaphore().acquire()
            task = asyncio.get_running_loop().create_task(self._execute(batch, rows))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        admission = self._admission
        admission.running += 1
        start = time.perf_counter()
        try:
            if self._on_batch is not None:
                self._on_batch(rows)
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, self._run_batch, [p.item for p in batch])
            for pending, result in zip(batch, results):
                if not pending.future.done():
                    pending.future.set_result(result)
        except Exception as exc:  # the batch failed: every caller gets the error
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        finally:
            admission._recent.append(time.perf_counter() - start)
            admission.running -= 1
            admission._semaphore().release()

    async def aclose(self) -> None:
        """Stop the loop after the queued and running batches finished."""
        self._closed = True
        while self._pending or self._running:
            await asyncio.sleep(0.005)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """ASGI middleware: HTTP 413 for request bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "Content-Length is not an integer")
                    return
                if declared > self.max_bytes:
                    await _send_error(send, 413, self._message(declared))
                    return
        seen = 0
        tracked = _StartTracking(send)

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, tracked)
        except BodyTooLarge:
            if not tracked.started:
                await _send_error(send, 413, self._message(seen))

    def _message(self, size: int) -> str:
        return (
            f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes "
            f"({self.max_bytes / 2**20:.1f} MiB); send a smaller image or raise --max-body-mb"
        )


class DrainGuard:
    """ASGI middleware: once the drain deadline passes, requests still waiting for their body get 503.

    uvicorn's own answer at its shutdown timeout is to cancel the request task, which logs a
    `CancelledError` traceback and sends a plain-text 500. Here every ``receive`` races the
    ``expired`` event instead, so a stalled upload ends in `DrainExpired`, which the app turns into
    the daemon's JSON error (503, ``Connection: close``) and one log line, before uvicorn's timeout
    (set a little later) is reached. A task uvicorn cancels anyway (an inference still running)
    gets the same JSON 503 rather than uvicorn's 500.

    Args:
        app: the wrapped ASGI app.
        expired: set when the drain timeout has passed.
        draining: tells whether a drain is under way (a cancellation outside one is not ours to answer).
    """

    def __init__(self, app: Any, expired: asyncio.Event, draining: Callable[[], bool]) -> None:
        self.app = app
        self.expired = expired
        self.draining = draining

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = _StartTracking(send)

        async def guarded_receive() -> dict:
            if self.expired.is_set():
                raise DrainExpired()
            message = asyncio.ensure_future(receive())
            expiry = asyncio.ensure_future(self.expired.wait())
            try:
                await asyncio.wait({message, expiry}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (message, expiry):
                    if not task.done():
                        task.cancel()
            if message.done() and not message.cancelled():
                return message.result()
            raise DrainExpired()

        try:
            await self.app(scope, guarded_receive, tracked)
        except DrainExpired:
            if not tracked.started:
                await _send_error(send, 503, DRAIN_EXPIRED_MESSAGE)
        except asyncio.CancelledError:
            if not self.draining():
                raise
            # uvicorn's shutdown timeout cancelled a request still computing: answer it, end quietly.
            logging.getLogger("edgetl.serve").warning("drain timeout: a request still running was cancelled (503)")
            if not tracked.started:
                await _send_error(send, 503, "server shutting down: the request did not finish within the drain "
                                             "timeout (--drain-timeout); retry on another instance")


#: The error of a request whose body had not arrived when the drain timeout passed.
DRAIN_EXPIRED_MESSAGE = (
    "server shutting down: the request body did not arrive within the drain timeout (--drain-timeout); retry"
)


class _StartTracking:
    """``send`` that remembers whether the response has started: a middleware can still answer with its own
    error only before that."""

    def __init__(self, send: Callable) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _send_error(send: Callable, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
