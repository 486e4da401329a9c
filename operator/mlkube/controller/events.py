"""Events posted off the reconcile path, as client-go's EventBroadcaster does.

A reconcile only puts an Event in a bounded queue; one sender thread posts them in order. In a
burst of 1,000 objects the API server's time goes to children and status first, and the Events
follow; when the queue is full an Event is dropped with a log line and a metric (client-go drops
too, at 1,000 queued), never blocking a reconcile.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from mlkube.api.common import Body
from mlkube.controller import metrics

MAX_QUEUED = 1000
"""client-go's `maxQueuedEvents`."""
logger = logging.getLogger("mlkube.events")

Post = Callable[[Body, str, str, str, datetime], None]
"""(object, type, reason, message, when it happened) -> posts one Event (never raises for an API
refusal)."""


class EventRecorder:
    def __init__(self, post: Post, max_queued: int = MAX_QUEUED) -> None:
        self._post = post
        self._queue: queue.Queue[tuple[Body, str, str, str, datetime]] = queue.Queue(max_queued)
        self._thread = threading.Thread(target=self._send, name="events", daemon=True)
        self._thread.start()

    def record(self, obj: Body, type_: str, reason: str, message: str) -> None:
        """Queue an Event about `obj`, stamped now (not when the sender gets to it); returns at
        once."""
        try:
            self._queue.put_nowait((obj, type_, reason, message, datetime.now(UTC)))
        except queue.Full:
            metrics.EVENTS_DROPPED.inc()
            logger.warning("event queue full: dropped %s %s on %s", type_, reason,
                           obj["metadata"]["name"])  # fmt: skip

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (at most `timeout` seconds) until every queued Event was posted."""
        done = threading.Event()

        def drained() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=drained, daemon=True).start()
        return done.wait(timeout)

    def _send(self) -> None:
        while True:
            event = self._queue.get()
            try:
                self._post(*event)
            except Exception:  # a bug in posting must not end the sender
                logger.exception("posting an event failed")
            finally:
                self._queue.task_done()
