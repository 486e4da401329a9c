"""Caches that re-list correctly: after a watch expired (410 Gone, an API server restart) a list
replaces the store and what it lacks is gone, as client-go's Reflector does; and every child names
the object it belongs to, so its change or its loss puts that owner in the queue."""

from __future__ import annotations

from typing import Any

from mlkube.builders.common import Owner, metadata, owner_of
from mlkube.controller.cache import Store


def body(name: str, version: int, namespace: str = "ns", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": str(version),
            "labels": labels,
        },
        "spec": {},
        "status": {},
    }


def test_a_relist_removes_what_was_deleted_while_the_watch_was_down() -> None:
    store = Store(slim_bodies=True, index=("mlkube.io/trainingjob",))
    store.put(body("a-train", 10, **{"mlkube.io/trainingjob": "a"}))
    store.put(body("b-train", 11, **{"mlkube.io/trainingjob": "b"}))
    store.relisting("ns")
    gone = store.replace("ns", [body("b-train", 11)], "20")
    assert [g["metadata"]["name"] for g in gone] == ["a-train"]
    assert store.get("ns", "a-train") is None
    assert store.list("ns", {"mlkube.io/trainingjob": "a"}) == [], "the index forgets it too"
    assert store.get("ns", "b-train") is not None


def test_what_is_newer_than_the_list_stays() -> None:
    store = Store()
    store.put(body("created-after-the-list", 30))
    store.put(body("placeholder", 0))  # what a reconcile just created, not yet watched
    store.relisting("ns")
    assert store.replace("ns", [], "20") == []
    assert store.get("ns", "created-after-the-list") is not None
    assert store.get("ns", "placeholder") is not None


def test_a_deletion_seen_while_the_list_was_under_way_is_never_undone() -> None:
    store = Store()
    store.put(body("a", 10))
    store.relisting("ns")
    store.observe("DELETED", body("a", 25))  # the watch, after the list was sent
    assert store.replace("ns", [body("a", 10)], "20") == []
    assert store.get("ns", "a") is None
    store.relisting("ns")
    assert store.replace("ns", [body("a", 31)], "31") == []
    assert store.get("ns", "a") is not None, "made again after its deletion"


def test_a_relist_of_one_namespace_leaves_the_others_alone() -> None:
    store = Store()
    store.put(body("a", 10, namespace="team-a"))
    store.put(body("b", 10, namespace="team-b"))
    store.relisting("team-a")
    store.replace("team-a", [], "20")
    assert store.get("team-b", "b") is not None
    assert store.namespaces() == ["team-b"]


def test_every_child_names_its_owner_by_its_controller_reference() -> None:
    owner = Owner(kind="Deployment", name="iris", namespace="ns", uid="u1")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": metadata("iris", owner, {})}
    assert owner_of(service) == ("Deployment", "iris")
    future = Owner(kind="BatchPrediction", name="nightly", namespace="ns", uid="u2")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata("x", future, {})}
    assert owner_of(job) == ("BatchPrediction", "nightly"), "a new kind needs no new rule"


def test_a_drift_run_owned_by_its_cronjob_names_its_driftmonitor_by_label() -> None:
    run = {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "CronJob", "name": "w-drift", "controller": True}
            ],
            "labels": {"mlkube.io/driftmonitor": "watch", "mlkube.io/deployment": "iris"},
        }
    }
    assert owner_of(run) == ("DriftMonitor", "watch")
    assert owner_of({"metadata": {"labels": {"app": "other"}}}) is None
