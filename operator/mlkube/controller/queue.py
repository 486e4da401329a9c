"""A per-key work queue, the one place that retries.

Keys are `(kind, namespace, name)`. Watch events and reconciles put keys in (`add`, with a delay
for follow-ups such as a running training or a canary pause); a pool of workers takes whichever
key is due first. One key is never reconciled twice at once, and a slow key only holds its own
worker: each reconcile has a deadline, after which its worker moves on (the key stays locked
until its thread ends, which every request's own timeout guarantees).

A lane bounds how many keys of one kind of work run at once: the operator puts Deployments that
scrape their pods in one lane per namespace, so one tenant's slow pods never hold every worker (a
due key whose lane is full waits until a reconcile of its lane ends).

A reconcile that raises a temporary error (or an unexpected one) is retried with exponential
backoff per key (a Retry-After from the API server is honoured); a success resets it. A terminal
error (`ApiError.terminal`: the same request would be refused again) is not retried hot: the key
waits for a change of its object, which enqueues it at once, with one slow safety look after
`terminal_delay`, as controller-runtime does with a `TerminalError` and kopf with a
`PermanentError`. There are no kopf timers: kopf puts a finalizer on every object with a timer,
so objects could not be deleted while the operator is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mlkube.controller import metrics
from mlkube.controller.errors import ApiError, Temporary

Key = tuple[str, str, str]
"""(kind, namespace, name)"""
Reconcile = Callable[[Key], float | None]
"""Returns seconds until the key wants another look (None: settled)."""
Lane = Callable[[Key], str | None]
"""The lane a key's reconcile runs in (None: none); called when the key is due, so it must be a
cheap read (a cache's)."""

logger = logging.getLogger("mlkube.queue")


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th consecutive retry of one key: base * 2^(n-1), at most `cap`."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        wait = min(self.cap, self.base * 2.0 ** max(failures - 1, 0))
        return max(wait, retry_after or 0.0)


class WorkQueue:
    def __init__(
        self,
        reconcile: Reconcile,
        workers: int = 16,
        deadline: float = 60.0,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        lane: Lane | None = None,
        lane_limit: int = 1,
        terminal_delay: float = 600.0,
    ) -> None:
        self._reconcile = reconcile
        self._lane: Lane = lane or (lambda key: None)
        self.lane_limit = lane_limit
        self._lanes: dict[Key, str] = {}
        """The lane of each running key that has one."""
        self._parked: dict[str, set[Key]] = {}
        """Due keys waiting for a place in their lane (still in `_due`, out of the heap)."""
        self.workers = workers
        self.deadline = deadline
        self.backoff = backoff or Backoff()
        self.terminal_delay = terminal_delay
        """Seconds before a key that failed terminally is looked at again, unless its object
        changes first."""
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._due: dict[Key, float] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._order = itertools.count()
        self._running: set[Key] = set()
        self._busy = 0
        """Reconciles executing in a thread now, whether or not their task still waits for them."""
        self._again: dict[Key, float] = {}
        """Wishes that arrived while their key was running: honoured when it ends."""
        self.failures: dict[Key, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        # more threads than workers: a reconcile past its deadline keeps its thread until it ends
        self._executor = ThreadPoolExecutor(workers * 2, thread_name_prefix="reconcile")

    # -- putting keys in (any thread) ---------------------------------------------------------

    def add(self, key: Key, delay: float | None = 0.0) -> None:
        """Look at `key` in `delay` seconds (None: no wish); the earliest wish wins."""
        if delay is None:
            return
        at = self._monotonic() + max(delay, 0.0)
        with self._lock:
            if key in self._running:
                self._again[key] = min(at, self._again.get(key, at))
                return
            if at < self._due.get(key, float("inf")):
                self._due[key] = at
                heapq.heappush(self._heap, (at, next(self._order), key))
            metrics.QUEUE_DEPTH.set(len(self._due))
        self._poke()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def _take(self) -> tuple[Key | None, float | None]:
        """The next due key (marked running), else how long until one is due."""
        now = self._monotonic()
        with self._lock:
            while self._heap:
                at, _, key = self._heap[0]
                if self._due.get(key) != at:
                    heapq.heappop(self._heap)  # superseded by an earlier wish, or taken
                    continue
                if at > now:
                    return None, at - now
                heapq.heappop(self._heap)
                lane = self._lane(key)
                if lane is not None:
                    if sum(1 for other in self._lanes.values() if other == lane) >= self.lane_limit:
                        self._parked.setdefault(lane, set()).add(key)
                        continue
                    self._lanes[key] = lane
                del self._due[key]
                self._running.add(key)
                metrics.QUEUE_DEPTH.set(len(self._due))
                return key, None
        return None, None

    def pending(self) -> dict[Key, float]:
        """Seconds until each waiting key is due (for tests and debugging)."""
        now = self._monotonic()
        with self._lock:
            return {key: at - now for key, at in self._due.items()}

    # -- running --------------------------------------------------------------------------------

    def _finish(self, key: Key, delay: float | None, error: BaseException | None) -> None:
        if error is None:
            self.failures.pop(key, None)
        elif isinstance(error, ApiError) and error.terminal:
            self.failures.pop(key, None)
            delay = self.terminal_delay
            metrics.QUEUE_RETRIES.labels(type(error).__name__, "true").inc()
            logger.warning(
                "reconciling %s/%s/%s: %s; terminal: again when it changes, or in %.0fs",
                *key, error, delay,
            )  # fmt: skip
        else:
            count = self.failures.get(key, 0) + 1
            self.failures[key] = count
            retry_after = error.retry_after if isinstance(error, Temporary) else None
            delay = self.backoff.delay(count, retry_after)
            kind = type(error).__name__ if isinstance(error, ApiError) else "Unexpected"
            metrics.QUEUE_RETRIES.labels(kind, "false").inc()
            if isinstance(error, ApiError):
                logger.warning("reconciling %s/%s/%s: %s; again in %.0fs", *key, error, delay)
            else:
                logger.error(
                    "reconciling %s/%s/%s failed; again in %.0fs", *key, delay, exc_info=error
                )
        with self._lock:
            self._running.discard(key)
            again = self._again.pop(key, None)
            lane = self._lanes.pop(key, None)
            for parked in self._parked.pop(lane, set()) if lane is not None else ():
                if parked in self._due:
                    heapq.heappush(self._heap, (self._due[parked], next(self._order), parked))
        if lane is not None:
            self._poke()
        if again is not None:
            self.add(key, again - self._monotonic())
        self.add(key, delay)

    def _call(self, key: Key) -> float | None:
        with self._lock:
            self._busy += 1
        try:
            return self._reconcile(key)
        finally:
            with self._lock:
                self._busy -= 1

    def idle(self, timeout: float) -> bool:
        """Whether no reconcile is executing, waiting up to `timeout` seconds for those that are
        (after `serve` stopped; a leader hands its Lease over only once it does nothing)."""
        end = self._monotonic() + timeout
        while True:
            with self._lock:
                if self._busy == 0:
                    return True
            if self._monotonic() >= end:
                return False
            time.sleep(0.05)

    async def _one(self, key: Key, slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._call, key)
        done, _ = await asyncio.wait({future}, timeout=self.deadline)
        slots.release()
        if not done:
            metrics.RECONCILE_DEADLINES.labels(key[0]).inc()
            logger.warning("reconciling %s/%s/%s passed its %.0fs deadline", *key, self.deadline)

        def settle(f: asyncio.Future[float | None]) -> None:
            error = f.exception()
            self._finish(key, None if error else f.result(), error)

        if done:
            settle(future)
        else:
            future.add_done_callback(settle)

    async def serve(self) -> None:
        """Run forever; cancel the task to stop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        slots = asyncio.Semaphore(self.workers)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                self._wake.clear()  # before looking: a key added meanwhile sets it again
                key, wait = self._take()
                if key is None:
                    slots.release()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=wait)
                    continue
                task = asyncio.create_task(self._one(key, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)
