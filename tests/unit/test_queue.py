"""The per-key work queue: the one place that retries, where one slow key never delays another."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable

from mlkube.controller.errors import Invalid, Temporary, classify
from mlkube.controller.queue import Backoff, Key, WorkQueue

FAST = Backoff(base=0.01, cap=0.05)


def run_for(queue: WorkQueue, seconds: float) -> None:
    async def briefly() -> None:
        task = asyncio.create_task(queue.serve())
        await asyncio.sleep(seconds)
        task.cancel()

    asyncio.run(briefly())


def recorder(
    answer: Callable[[Key, int], float | None],
) -> tuple[list[tuple[Key, float]], Callable[[Key], float | None]]:
    calls: list[tuple[Key, float]] = []

    def reconcile(key: Key) -> float | None:
        calls.append((key, time.monotonic()))
        return answer(key, len(calls))

    return calls, reconcile


def test_a_key_comes_back_when_asked_and_stops_when_settled() -> None:
    calls, reconcile = recorder(lambda _, n: 0.01 if n < 3 else None)
    queue = WorkQueue(reconcile, backoff=FAST)
    queue.add(("Deployment", "ns", "iris"))
    run_for(queue, 0.3)
    assert [key for key, _ in calls] == [("Deployment", "ns", "iris")] * 3


def test_one_hung_key_never_delays_another() -> None:
    release = threading.Event()

    def reconcile(key: Key) -> float | None:
        if key[2] == "hung":
            release.wait(5)
        return None

    done: list[Key] = []
    queue = WorkQueue(lambda key: (reconcile(key), done.append(key))[0], workers=2, deadline=0.1)
    queue.add(("Deployment", "ns", "hung"))
    for i in range(20):
        queue.add(("TrainingJob", "ns", f"t{i}"))
    run_for(queue, 0.5)
    release.set()
    assert {key[2] for key in done} >= {f"t{i}" for i in range(20)}


def test_a_key_past_its_deadline_frees_its_worker_but_is_never_run_twice_at_once() -> None:
    running, overlaps = [0], [0]
    gate = threading.Event()

    def reconcile(key: Key) -> float | None:
        running[0] += 1
        overlaps[0] = max(overlaps[0], running[0])
        gate.wait(0.3)
        running[0] -= 1
        return None

    queue = WorkQueue(reconcile, workers=4, deadline=0.05)
    key = ("Deployment", "ns", "slow")

    async def scenario() -> None:
        task = asyncio.create_task(queue.serve())
        queue.add(key)
        await asyncio.sleep(0.1)  # past the deadline, still running
        queue.add(key)  # wished for again while it runs: runs once more, after
        await asyncio.sleep(0.8)
        task.cancel()

    asyncio.run(scenario())
    assert overlaps[0] == 1


def test_failures_back_off_exponentially_and_a_success_resets() -> None:
    calls, reconcile = recorder(lambda _, n: None)

    def flaky(key: Key) -> float | None:
        reconcile(key)
        if len(calls) <= 4:
            raise Temporary(503, "ServiceUnavailable", "etcd is slow")
        return None

    queue = WorkQueue(flaky, backoff=Backoff(base=0.02, cap=1.0))
    key = ("TrainingJob", "ns", "t")
    queue.add(key)
    run_for(queue, 1.0)
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(calls)]
    assert len(calls) == 5
    assert gaps[0] >= 0.02
    assert gaps[3] >= 0.16, gaps  # 0.02, 0.04, 0.08, 0.16
    assert key not in queue.failures


def test_retry_after_is_honoured() -> None:
    assert Backoff(base=1, cap=300).delay(1, retry_after=7) == 7
    assert Backoff(base=1, cap=300).delay(12) == 300


def test_the_earliest_wish_wins() -> None:
    queue = WorkQueue(lambda _: None)
    key = ("DriftMonitor", "ns", "d")
    queue.add(key, 100)
    queue.add(key, 0.5)
    queue.add(key, 50)
    queue.add(key, None)
    assert 0 < queue.pending()[key] <= 0.5


def test_api_answers_fall_into_one_small_taxonomy() -> None:
    refused = classify(422, "Unprocessable Entity", b'{"message": "name too long"}')
    assert isinstance(refused, Invalid)
    assert refused.terminal
    assert refused.message == "name too long"
    throttled = classify(429, "Too Many Requests", b"", {"Retry-After": "3"})
    assert isinstance(throttled, Temporary)
    assert not throttled.terminal
    assert throttled.retry_after == 3
    assert isinstance(classify(500, "Internal", b""), Temporary)
    assert classify(404, "Not Found", b"").terminal
