"""When a child's watch event means a hand edit the operator must put back at once."""

from __future__ import annotations

from typing import Any

from mlkube.controller.context import spec_version

SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "iris", "resourceVersion": "7"},
    "spec": {"selector": {"mlkube.io/deployment": "iris"}, "ports": [{"port": 80}]},
}


def test_a_kind_with_a_generation_is_versioned_by_it() -> None:
    deployment = {"metadata": {"generation": 3}, "spec": {"replicas": 2}}
    assert spec_version(deployment) == 3
    assert spec_version({**deployment, "status": {"readyReplicas": 1}}) == 3


def test_a_service_or_hpa_edit_changes_its_version_but_a_status_update_does_not() -> None:
    """Services and HPAs keep no generation: a selector edited by hand left the Service without
    endpoints for up to five minutes while the memo held."""
    edited = {**SERVICE, "spec": {**SERVICE["spec"], "selector": {"mlkube.io/deployment": "x"}}}
    assert spec_version(edited) != spec_version(SERVICE)
    status_only = {**SERVICE, "metadata": {"name": "iris", "resourceVersion": "8"},
                   "status": {"loadBalancer": {}}}  # fmt: skip
    assert spec_version(status_only) == spec_version(SERVICE)
