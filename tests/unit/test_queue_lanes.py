"""Lanes in the work queue: one namespace's slow scrapes never hold every worker."""

from __future__ import annotations

import asyncio
import threading
import time

from mlkube.controller.queue import Key, WorkQueue


def scraping(key: Key) -> str | None:
    return f"scrape/{key[1]}" if key[0] == "Deployment" else None


def test_a_full_lane_leaves_the_other_workers_to_other_namespaces() -> None:
    release = threading.Event()
    started: dict[Key, float] = {}
    most_in_lane = [0]
    in_lane = [0]
    lock = threading.Lock()

    def reconcile(key: Key) -> float | None:
        started.setdefault(key, time.monotonic())
        if key[0] == "Deployment":
            with lock:
                in_lane[0] += 1
                most_in_lane[0] = max(most_in_lane[0], in_lane[0])
            release.wait(5)  # a slow scrape
            with lock:
                in_lane[0] -= 1
        return None

    queue = WorkQueue(reconcile, workers=4, lane=scraping, lane_limit=1)
    slow = [("Deployment", "team-a", f"canary-{i}") for i in range(6)]

    async def scenario() -> float:
        task = asyncio.create_task(queue.serve())
        for key in slow:
            queue.add(key)
        await asyncio.sleep(0.1)
        queued = time.monotonic()
        queue.add(("TrainingJob", "team-b", "train"))
        queue.add(("Deployment", "team-b", "serve"))
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.sleep(0.3)
        task.cancel()
        return queued

    queued = asyncio.run(scenario())
    assert started[("TrainingJob", "team-b", "train")] - queued < 0.1
    assert started[("Deployment", "team-b", "serve")] - queued < 0.1, "a lane per namespace"
    assert most_in_lane[0] <= 2, "team-a's lane held one at a time (plus team-b's own)"
    assert set(slow) <= set(started), "parked keys run once their lane frees"


def test_a_parked_key_keeps_its_place_and_runs_once() -> None:
    runs: list[Key] = []
    gate = threading.Event()

    def reconcile(key: Key) -> float | None:
        runs.append(key)
        if key[2] == "first":
            gate.wait(5)
        return None

    queue = WorkQueue(reconcile, workers=2, lane=scraping, lane_limit=1)
    first, second = ("Deployment", "ns", "first"), ("Deployment", "ns", "second")

    async def scenario() -> None:
        task = asyncio.create_task(queue.serve())
        queue.add(first)
        await asyncio.sleep(0.05)
        queue.add(second)
        await asyncio.sleep(0.05)
        queue.add(second, 10)  # a later wish changes nothing
        assert queue.pending().keys() == {second}, "parked, still due"
        gate.set()
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(scenario())
    assert runs == [first, second]
