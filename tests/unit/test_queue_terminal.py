"""The error taxonomy drives the queue: a terminal error waits for a change of its object (one
slow safety look), a temporary one backs off; each is counted under its own label."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from mlkube.controller.errors import Forbidden, Invalid, Temporary
from mlkube.controller.queue import Backoff, Key, WorkQueue

KEY: Key = ("TrainingJob", "ns", "refused")


def serve_for(queue: WorkQueue, seconds: float) -> None:
    async def briefly() -> None:
        task = asyncio.create_task(queue.serve())
        await asyncio.sleep(seconds)
        task.cancel()

    asyncio.run(briefly())


def counted(error: str, terminal: str) -> float:
    labels = {"error": error, "terminal": terminal}
    return REGISTRY.get_sample_value("mlkube_operator_queue_retries_total", labels) or 0.0


def test_a_terminal_error_is_not_retried_until_its_object_changes() -> None:
    calls: list[Key] = []

    def refuse(key: Key) -> float | None:
        calls.append(key)
        raise Invalid(422, "Invalid", "spec.template: cpu request of 3 is not allowed")

    queue = WorkQueue(refuse, backoff=Backoff(base=0.01, cap=0.02), terminal_delay=60)
    before = counted("Invalid", "true")
    seen: dict[str, object] = {}

    async def scenario() -> None:
        task = asyncio.create_task(queue.serve())
        queue.add(KEY)
        await asyncio.sleep(0.3)
        seen["calls"], seen["pending"] = list(calls), queue.pending()[KEY]
        queue.add(KEY)  # a watch event: the object changed
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(scenario())
    assert seen["calls"] == [KEY], "no hot retries"
    assert 59 < seen["pending"] <= 60, "one slow safety look"  # type: ignore[operator]
    assert KEY not in queue.failures
    assert counted("Invalid", "true") == before + 2
    assert calls == [KEY, KEY], "a change is looked at at once"


def test_a_temporary_error_backs_off_and_is_counted_apart() -> None:
    calls: list[Key] = []

    def throttled(key: Key) -> float | None:
        calls.append(key)
        raise Temporary(429, "TooManyRequests", "slow down")

    queue = WorkQueue(throttled, backoff=Backoff(base=0.02, cap=0.04), terminal_delay=60)
    before = counted("Temporary", "false")
    queue.add(KEY)
    serve_for(queue, 0.3)
    assert len(calls) >= 4
    assert queue.failures[KEY] == len(calls)
    assert counted("Temporary", "false") >= before + 4


def test_every_refusal_the_api_server_can_give_is_terminal_for_the_queue() -> None:
    forbidden = Forbidden(403, "Forbidden", 'services "iris" is forbidden: exceeded quota: q')
    queue = WorkQueue(lambda key: (_ for _ in ()).throw(forbidden), terminal_delay=30)
    queue.add(KEY)
    serve_for(queue, 0.2)
    assert 29 < queue.pending()[KEY] <= 30
