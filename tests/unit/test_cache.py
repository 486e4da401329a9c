"""The watch-fed caches the reconcilers read instead of listing the namespace."""

from __future__ import annotations

from typing import Any

from mlkube.controller.cache import Store


def job(name: str, version: str, owner: str = "iris", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": version,
            "labels": {"mlkube.io/trainingjob": owner},
            "managedFields": [{"manager": "kube-controller-manager"}],
        },
        "spec": {"suspend": True, "template": {"spec": {"containers": []}}, **spec},
        "status": {"active": 1},
    }


def test_an_older_version_never_replaces_a_newer_one() -> None:
    store = Store()
    store.put(job("a", "12"))
    store.observe("MODIFIED", job("a", "9", suspend=False))
    assert store.get("ns", "a")["spec"]["suspend"] is True  # type: ignore[index]
    store.observe("MODIFIED", job("a", "13", suspend=False))
    assert store.get("ns", "a")["spec"]["suspend"] is False  # type: ignore[index]
    store.observe("DELETED", job("a", "14"))
    assert store.get("ns", "a") is None


def test_children_are_kept_slim() -> None:
    store = Store(slim_bodies=True)
    kept = store.put(job("a", "1"))
    assert "template" not in kept["spec"]
    assert kept["spec"]["suspend"] is True
    assert "managedFields" not in kept["metadata"]
    assert kept["status"] == {"active": 1}


def test_lists_by_an_indexed_label_see_relabelling() -> None:
    store = Store(index=("mlkube.io/trainingjob",))
    store.put(job("a", "1", owner="iris"))
    store.put(job("b", "1", owner="wine"))
    assert [j["metadata"]["name"] for j in store.list("ns", {"mlkube.io/trainingjob": "iris"})] == [
        "a"
    ]
    store.put(job("b", "2", owner="iris"))
    names = sorted(
        j["metadata"]["name"] for j in store.list("ns", {"mlkube.io/trainingjob": "iris"})
    )
    assert names == ["a", "b"]
    assert store.list("ns", {"mlkube.io/trainingjob": "wine"}) == []
    assert store.list("other", {"mlkube.io/trainingjob": "iris"}) == []
