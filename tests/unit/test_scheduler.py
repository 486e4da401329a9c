"""The reconcile schedule that replaces kopf timers (and their finalizers)."""

from __future__ import annotations

import asyncio

import pytest

from mlkube.operator import scheduler as scheduling
from mlkube.operator.scheduler import Scheduler


def test_reconciles_come_back_when_asked_and_stop_when_settled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduling, "POLL_SECONDS", 0.01)
    calls: list[tuple[str, str, str]] = []

    def reconcile(kind: str, namespace: str, name: str) -> float | None:
        calls.append((kind, namespace, name))
        return 0.01 if len(calls) < 3 else None

    schedule = Scheduler(reconcile)
    schedule.run_now(("Deployment", "ns", "iris"))

    async def run_briefly() -> None:
        task = asyncio.create_task(schedule.serve())
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(run_briefly())
    assert calls == [("Deployment", "ns", "iris")] * 3


def test_a_failing_reconcile_is_retried_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduling, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(scheduling, "RETRY_SECONDS", 0.01)
    attempts: list[int] = []

    def flaky(kind: str, namespace: str, name: str) -> float | None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("API server unavailable")
        return None

    schedule = Scheduler(flaky)
    with pytest.raises(RuntimeError):
        schedule.run_now(("TrainingJob", "ns", "t"))

    async def run_briefly() -> None:
        task = asyncio.create_task(schedule.serve())
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(run_briefly())
    assert len(attempts) == 3


def test_the_earliest_wish_wins() -> None:
    schedule = Scheduler(lambda *_: None)
    key = ("DriftMonitor", "ns", "d")
    schedule.after(key, 100)
    schedule.after(key, 0)
    schedule.after(key, 50)
    schedule.after(key, None)
    assert schedule._take_due() == [key]
