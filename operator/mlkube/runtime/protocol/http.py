"""HTTP under every protocol: ASGI types, reading a body within its limits, the bounded thread
pool where large requests compute, and writing a JSON answer or a failure."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import orjson
import sklearn

from mlkube.runtime.protocol.errors import Overloaded, RequestError
from mlkube.runtime.protocol.settings import (
    ENV_MAX_CONCURRENCY,
    ENV_MAX_QUEUED,
    ENV_MIN_BODY_RATE,
)

logger = logging.getLogger("mlkube.serve")
_T = TypeVar("_T")

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024
REQUEST_ID_HEADER = b"x-request-id"  # ASGI servers give header names in lower case
INLINE_BODY_BYTES = 64 * 1024
"""Bodies up to this size are decoded on the event loop (under ~0.5 ms for object rows); larger
ones in the thread pool."""
BODY_SWEEP_SECONDS = 0.25
"""How often bodies still arriving are checked against the floor rate."""
CLOSE_CONNECTION = (b"connection", b"close")
Headers = Sequence[tuple[bytes, bytes]]
ErrorWording = Callable[[RequestError], tuple[int, dict[str, Any]]]
"""A protocol's status and body for a refused request."""


def mlkube_error(error: RequestError) -> tuple[int, dict[str, Any]]:
    """mlkube's own wording (``/predict``, ``/feedback``, KServe v1): the status as raised and
    ``{"error", "column"}``."""
    return error.status, error.body()


class _Read:
    """A body being read: since when, and how much of it is in."""

    __slots__ = ("expired", "received", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.received = 0
        self.expired = False


class BodyReader:
    """Reads request bodies: one over `MAX_BODY_BYTES` is a 413, and one whose bytes fall behind
    `rate` a second, on average, `grace` seconds after its request began is dropped with a 408
    (a client dripping a body would otherwise hold its memory and connection for ever).

    Bodies still arriving are checked every `BODY_SWEEP_SECONDS` by one timer, which cancels the
    reads that fell behind: a request whose body came with its headers pays a dict entry, no timer
    of its own."""

    def __init__(self, rate: float, grace: float) -> None:
        self.rate = rate
        self.grace = grace
        self._reads: dict[asyncio.Task[Any], _Read] = {}
        self._sweeping = False

    async def read(self, receive: ASGIReceive, started: float) -> bytes:
        """The body of the request that began at `started` (``time.perf_counter``)."""
        task = asyncio.current_task()
        if not self.rate or task is None:
            return await read_body(receive)
        read = _Read(started)
        self._reads[task] = read
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(BODY_SWEEP_SECONDS, self._sweep)
        try:
            return await read_body(receive, read)
        except asyncio.CancelledError:
            if not read.expired:
                raise
            task.uncancel()
            raise RequestError(
                408,
                f"the request body arrived slower than {self.rate:g} bytes a second "
                f"({ENV_MIN_BODY_RATE}): {read.received} bytes in "
                f"{time.perf_counter() - started:.1f} s",
                close=True,
            ) from None
        finally:
            del self._reads[task]

    def _sweep(self) -> None:
        now = time.perf_counter()
        for task, read in self._reads.items():
            if not read.expired and now > read.started + self.grace + read.received / self.rate:
                read.expired = True
                task.cancel()
        if self._reads:
            asyncio.get_running_loop().call_later(BODY_SWEEP_SECONDS, self._sweep)
        else:
            self._sweeping = False


async def read_body(receive: ASGIReceive, read: _Read | None = None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "client disconnected before sending the body")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(
                413, f"request body is larger than {MAX_BODY_BYTES} bytes", close=True
            )
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk  # one chunk: no copy
        chunks.append(chunk)
        if read is not None:
            read.received = size


class ThreadPool:
    """Where large requests compute: `workers` threads, and at most `queued` more requests
    admitted to wait for one; past that `admit` refuses (`Overloaded`) instead of queueing.

    Call `admit` and `leave` from the event loop, once each per admitted request, which may then
    `run` any number of steps."""

    def __init__(self, workers: int, queued: int) -> None:
        self.workers = workers
        self.queued = queued
        self._executor = ThreadPoolExecutor(
            workers, thread_name_prefix="mlkube-predict", initializer=configure_sklearn
        )
        self._admitted = 0
        self._seconds = 1.0
        """How long admitted requests took, a moving average: what ``Retry-After`` says."""

    def admit(self) -> float:
        """A place for one more request; the time it was admitted."""
        if self._admitted >= self.workers + self.queued:
            wait = max(1, math.ceil(self._seconds * self._admitted / self.workers))
            raise Overloaded(
                f"the server is busy: {self._admitted} large requests are computing or waiting "
                f"({ENV_MAX_CONCURRENCY}={self.workers}, {ENV_MAX_QUEUED}={self.queued}); retry "
                f"after {wait} s",
                wait,
            )
        self._admitted += 1
        return time.perf_counter()

    def leave(self, admitted: float) -> None:
        self._admitted -= 1
        self._seconds += 0.2 * (time.perf_counter() - admitted - self._seconds)

    async def run(self, call: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def configure_sklearn() -> None:
    """Requests are checked to be finite before they reach the model, so sklearn need not check
    again; the setting is per thread."""
    sklearn.set_config(assume_finite=True)


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: arrays of objects (string labels) or not contiguous."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode(document: Any) -> bytes:
    return orjson.dumps(document, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY)


async def send_json(
    send: ASGISend,
    status: int,
    document: Any,
    request_id: str | None = None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """`document` (or its JSON, as bytes) as the answer; `request_id` is echoed in
    ``X-Request-ID``."""
    body = document if type(document) is bytes else encode(document)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    if request_id is not None:
        headers.append((REQUEST_ID_HEADER, request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def failure(
    error: Exception, what: str, wording: ErrorWording = mlkube_error
) -> tuple[int, dict[str, Any], Headers]:
    """A request that failed as its answer: a RequestError's 4xx in the protocol's `wording`
    (closing the connection when its body was cut off), 503 with Retry-After when the pool is
    full, else a 500 whose traceback goes to the log, never to the client."""
    if isinstance(error, RequestError):
        status, body = wording(error)
        return status, body, (CLOSE_CONNECTION,) if error.close else ()
    if isinstance(error, Overloaded):
        return 503, {"error": error.message}, ((b"retry-after", str(error.retry_after).encode()),)
    logger.exception("%s failed", what, exc_info=error)
    return 500, {"error": f"{what} failed; see the server log"}, ()
