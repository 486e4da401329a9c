"""Timed reconciles without kopf timers.

kopf puts a finalizer on every object that has a timer or daemon, so with the operator stopped
(uninstalled, crashed, or between test runs) such objects can never be deleted. Instead, each
reconcile returns when it wants to look again, and this scheduler calls it back from a
background task. Progress lives in status, so a restart loses nothing: kopf's resume handlers
reconcile every object once and the schedule rebuilds itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

Key = tuple[str, str, str]
"""(kind, namespace, name)"""
Reconcile = Callable[[str, str, str], float | None]

POLL_SECONDS = 0.5
RETRY_SECONDS = 10.0
"""After a reconcile raised: try again, never drop the object."""

logger = logging.getLogger("mlkube.scheduler")


class Scheduler:
    def __init__(self, reconcile: Reconcile, concurrency: int = 4) -> None:
        self._reconcile = reconcile
        self._due: dict[Key, float] = {}
        self._lock = threading.Lock()
        self._concurrency = concurrency

    def after(self, key: Key, delay: float | None) -> None:
        """Look at `key` again in `delay` seconds (None: no need); an earlier wish wins."""
        if delay is None:
            return
        at = time.monotonic() + delay
        with self._lock:
            self._due[key] = min(at, self._due.get(key, at))

    def run_now(self, key: Key) -> None:
        """Reconcile in the calling thread (a change handler) and schedule what it asks for."""
        with self._lock:
            self._due.pop(key, None)
        try:
            self.after(key, self._reconcile(*key))
        except Exception:
            self.after(key, RETRY_SECONDS)
            raise

    def _take_due(self) -> list[Key]:
        now = time.monotonic()
        with self._lock:
            due = [key for key, at in self._due.items() if at <= now]
            for key in due:
                del self._due[key]
        return due

    async def serve(self) -> None:
        """Run forever; cancel the task to stop."""
        limit = asyncio.Semaphore(self._concurrency)

        async def one(key: Key) -> None:
            async with limit:
                try:
                    delay = await asyncio.to_thread(self._reconcile, *key)
                except Exception:
                    logger.exception("reconciling %s/%s/%s failed; retrying", *key)
                    delay = RETRY_SECONDS
                self.after(key, delay)

        while True:
            due = self._take_due()
            if due:
                await asyncio.gather(*(one(key) for key in due))
            await asyncio.sleep(POLL_SECONDS)
