"""Events leave the reconcile path: queued at once, posted in order by one sender, dropped (never
blocking) when the queue is full."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from mlkube.api.common import Body
from mlkube.controller import metrics
from mlkube.controller.events import EventRecorder, Post


def obj(name: str) -> Body:
    return {"metadata": {"name": name, "namespace": "team-a"}}


def test_events_are_posted_in_the_order_they_were_recorded() -> None:
    posted: list[str] = []
    recorder = EventRecorder(lambda o, type_, reason, message, at: posted.append(reason))
    for reason in ("JobCreated", "Suspended", "Resumed"):
        recorder.record(obj("tj"), "Normal", reason, "")
    assert recorder.flush(timeout=5)
    assert posted == ["JobCreated", "Suspended", "Resumed"]


def held_api_server() -> tuple[threading.Event, list[tuple[str, datetime]], Post]:
    """A post that waits until released: (release, what was posted as (reason, stamp), post)."""
    release = threading.Event()
    posted: list[tuple[str, datetime]] = []

    def post(o: Body, type_: str, reason: str, message: str, at: datetime) -> None:
        release.wait(5)
        posted.append((reason, at))

    return release, posted, post


def test_a_slow_api_server_never_blocks_a_reconcile_and_overflow_is_counted() -> None:
    release, posted, post = held_api_server()
    recorder = EventRecorder(post, max_queued=2)
    dropped = metrics.EVENTS_DROPPED._value.get()
    # one in the sender's hands, two queued, two more dropped: record() returned every time
    for i in range(5):
        recorder.record(obj("d"), "Normal", f"e{i}", "")
    assert metrics.EVENTS_DROPPED._value.get() - dropped >= 1
    release.set()
    assert recorder.flush(timeout=5)
    assert posted[0][0] == "e0"
    assert len(posted) <= 3


def test_a_failing_post_does_not_stop_the_sender() -> None:
    posted: list[str] = []

    def post(o: Body, type_: str, reason: str, message: str, at: datetime) -> None:
        if reason == "Broken":
            raise RuntimeError("a bug")
        posted.append(reason)

    recorder = EventRecorder(post)
    recorder.record(obj("d"), "Normal", "Broken", "")
    recorder.record(obj("d"), "Normal", "Fine", "")
    assert recorder.flush(timeout=5)
    assert posted == ["Fine"]


def test_an_event_is_stamped_when_it_was_recorded_not_when_it_was_sent() -> None:
    release, posted, post = held_api_server()
    recorder = EventRecorder(post)
    before = datetime.now(UTC)
    recorder.record(obj("d"), "Normal", "RollingOut", "")
    recorded = datetime.now(UTC)
    release.set()
    assert recorder.flush(timeout=5)
    assert before <= posted[0][1] <= recorded
