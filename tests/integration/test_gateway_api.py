"""Weighted canaries through the Gateway API on the real API server (issue 8, item 3): with
`traffic: GatewayAPI` the operator writes an HTTPRoute whose backendRefs are one Service per
version, and no weight moves to a version with no ready endpoint behind it.

The Gateway API's standard-channel CRDs come from `hack/gateway-api-crds`; no gateway controller
runs, so the tests read the route the API server stored, not requests a gateway sent.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import urllib3
from kopf.testing import KopfRunner
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from mlkube.builders.serving import TRAFFIC_LABEL, VERSION_LABEL, server_name
from mlkube.contract import DEPLOYMENT_LABEL
from mlkube.core.actions import ACTION_ANNOTATION, action_value
from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import (
    GATEWAY_API_GROUP,
    GROUP,
    VERSION,
    condition,
    create,
    eventually,
    status_of,
    training_finished,
)
from tests.loop import training

pytestmark = pytest.mark.usefixtures("crds", "gateway_api_crds")

GATEWAY = {"name": "mlkube-test-gateway"}
"""The route's parent; no Gateway of that name needs to exist for the API server to store it."""
NEVER_READY = "test.mlkube.io/never-ready"
"""A readiness gate nobody sets: the pod runs, its server answers /readyz, the pod is never Ready."""


def deployment(name: str, model_version: str, **canary: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "modelVersion": model_version,
            "replicas": 1,
            "traffic": "GatewayAPI",
            "gateway": GATEWAY,
            "strategy": {"canary": canary},
        },
    }


def route(kube: KubeCluster, ns: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = kube.custom.get_namespaced_custom_object(
            GATEWAY_API_GROUP, "v1", ns, "httproutes", name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return found


def weights(kube: KubeCluster, ns: str, name: str) -> dict[str, int] | None:
    """The HTTPRoute's backendRefs as {backend Service: weight}; None before the route exists."""
    found = route(kube, ns, name)
    if found is None:
        return None
    rules = found["spec"]["rules"]
    assert len(rules) == 1, rules
    return {ref["name"]: int(ref.get("weight", 1)) for ref in rules[0].get("backendRefs", [])}


def services(kube: KubeCluster, ns: str, name: str) -> dict[str, dict[str, str]]:
    """The Deployment's Services as {name: selector}."""
    found = kube.core.list_namespaced_service(ns, label_selector=f"{DEPLOYMENT_LABEL}={name}")
    return {s.metadata.name: dict(s.spec.selector or {}) for s in found.items}


def workloads(kube: KubeCluster, ns: str, name: str) -> dict[str, Any]:
    found = kube.apps.list_namespaced_deployment(ns, label_selector=f"{DEPLOYMENT_LABEL}={name}")
    return {d.metadata.name: d for d in found.items}


def endpoints(kube: KubeCluster, ns: str, service: str) -> list[bool]:
    """Whether each endpoint behind `service` is ready, from its EndpointSlices."""
    slices = client.DiscoveryV1Api(kube.api_client).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={service}"
    )
    return [
        bool(e.conditions and e.conditions.ready) for s in slices.items for e in s.endpoints or []
    ]


def act(kube: KubeCluster, ns: str, name: str, patch: dict[str, Any]) -> None:
    kube.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "deployments", name, patch)


def promote(kube: KubeCluster, ns: str, name: str) -> None:
    """What `mlkube promote` does: an action annotation, never a spec edit."""
    value = action_value("promote", datetime.now(UTC))
    act(kube, ns, name, {"metadata": {"annotations": {ACTION_ANNOTATION: value}}})


class History:
    """Every change of one kind of object, in the API server's order, from a watch started now.

    resourceVersions are etcd revisions on this cluster, so they order changes across kinds
    (Kubernetes calls them opaque; the test relies on its own etcd-backed API server)."""

    def __init__(
        self, list_fn: Callable[..., Any], *args: str, selector: str | None = None
    ) -> None:
        self.changes: list[tuple[int, str, dict[str, Any]]] = []
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        self._thread = threading.Thread(
            target=self._run, args=(list_fn, args, selector), daemon=True
        )
        self._thread.start()

    def _run(
        self, list_fn: Callable[..., Any], args: tuple[str, ...], selector: str | None
    ) -> None:
        stream = self._watch.stream(  # type: ignore[no-untyped-call]
            list_fn, *args, label_selector=selector, timeout_seconds=300, deserialize=False
        )
        # stop() closes the connection under the stream: its end is not an error
        with contextlib.suppress(urllib3.exceptions.ProtocolError):
            for event in stream:
                body = event["object"]
                self.changes.append((int(body["metadata"]["resourceVersion"]), event["type"], body))

    def stop(self) -> None:
        self._watch.stop()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Look:
    """One look at a canary, the route read first: a weight seen can only have been decided
    from a readiness at or before the one read after it."""

    route: dict[str, int]
    ready_replicas: int
    pods: list[tuple[str, bool]]
    """(phase, Ready) of each canary pod."""
    endpoints: list[bool]
    status: dict[str, Any]


def look(kube: KubeCluster, ns: str, name: str, canary_version: str) -> Look:
    canary = server_name(name, canary_version)
    routed = weights(kube, ns, name) or {}
    workload = workloads(kube, ns, name).get(canary)
    ready = (workload.status.ready_replicas or 0) if workload else 0
    selector = f"{DEPLOYMENT_LABEL}={name},{VERSION_LABEL}={canary_version}"
    pods = [
        (
            p.status.phase,
            any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []),
        )
        for p in kube.core.list_namespaced_pod(ns, label_selector=selector).items
    ]
    return Look(
        routed, ready, pods, endpoints(kube, ns, canary), status_of(kube, ns, "deployments", name)
    )


@pytest.fixture(scope="module")
def versions(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> tuple[str, str]:
    """Two verified, approved ModelVersions of one model, trained side by side."""
    kube, ns = kube_cluster, operator_namespace
    names = ("gw-a", "gw-b")
    for name in names:
        create(kube, ns, training(name, estimator={"className": "sklearn.naive_bayes.GaussianNB"}))
    found = []
    for name in names:
        done = training_finished(kube, ns, name)
        assert done["phase"] == "Succeeded", done
        found.append(str(done["modelVersion"]))
    for version in found:

        def verified(v: str = version) -> bool:
            return (
                condition(status_of(kube, ns, "modelversions", v), "Ready").get("status") == "True"
            )

        eventually(verified, 120, f"{version} to be verified")
    first, second = sorted(found)
    return first, second


def serving(kube: KubeCluster, ns: str, name: str, version: str) -> None:
    """Wait until `version` serves alone: Healthy, all weight on its Service."""
    backend = server_name(name, version)
    eventually(
        lambda: status_of(kube, ns, "deployments", name).get("phase") == "Healthy",
        240,
        f"{name} to serve {version}",
    )
    eventually(lambda: weights(kube, ns, name) == {backend: 100}, 30, f"the route to {version}")
    found = route(kube, ns, name)
    assert found is not None
    # the API server's defaults filled in; the gateway's namespace is the Deployment's
    assert found["spec"]["parentRefs"] == [
        {**GATEWAY, "namespace": ns, "group": GATEWAY_API_GROUP, "kind": "Gateway"}
    ]
    # no hostnames: the Deployment's own path, handed on to the server as /
    assert found["spec"]["rules"][0]["matches"] == [
        {"path": {"type": "PathPrefix", "value": f"/serving/{ns}/{name}"}}
    ]
    assert services(kube, ns, name)[backend] == {
        DEPLOYMENT_LABEL: name,
        VERSION_LABEL: version,
        TRAFFIC_LABEL: "on",
    }


@pytest.mark.timeout(600)
def test_a_canary_that_never_becomes_ready_gets_no_weight_and_rolls_back_at_its_deadline(
    kube_cluster: KubeCluster,
    operator_namespace: str,
    versions: tuple[str, str],
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    kube, ns = kube_cluster, operator_namespace
    v1, v2 = versions
    name = "held"
    stable, canary = server_name(name, v1), server_name(name, v2)
    steps = [{"pause": {}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
    create(kube, ns, deployment(name, v1, steps=steps, progressDeadlineSeconds=30))
    serving(kube, ns, name, v1)

    # the first step is a pause at weight 0: the canary's workload exists with no pods yet
    act(kube, ns, name, {"spec": {"modelVersion": v2}})
    eventually(
        lambda: (
            status_of(kube, ns, "deployments", name).get("phase") == "Paused"
            and canary in workloads(kube, ns, name)
        ),
        60,
        "the canary to pause at its first step",
    )
    assert workloads(kube, ns, name)[canary].spec.replicas == 0
    assert weights(kube, ns, name) == {stable: 100, canary: 0}
    assert canary in services(kube, ns, name)
    # its pods will run but never be Ready: a readiness gate written by another field manager,
    # which the operator's server-side apply leaves in place
    gate = {"spec": {"template": {"spec": {"readinessGates": [{"conditionType": NEVER_READY}]}}}}
    kubectl("-n", ns, "patch", "deployment", canary, "--type=merge", "-p", json.dumps(gate))
    promote(kube, ns, name)

    looks: list[Look] = []

    def rolled_back() -> dict[str, Any] | None:
        looks.append(look(kube, ns, name, v2))
        status = looks[-1].status
        return status if status.get("abortedVersion") == v2 else None

    degraded = eventually(rolled_back, 120, "the canary to hit its progress deadline", 0.5)
    reason = condition(degraded, "Degraded")
    assert reason["reason"] == "ProgressDeadlineExceeded", reason
    assert "0 of 1 canary pods ready after 30s" in reason["message"]
    assert degraded["stableVersion"] == v1

    held_back = [
        seen
        for seen in looks
        if seen.status.get("canaryWeight") == 50 and ("Running", False) in seen.pods
    ]
    assert held_back, f"the step asked for 50 while the canary's pod ran unready: {looks}"
    assert any(seen.endpoints == [False] for seen in held_back), "its endpoint listed, not ready"
    for seen in looks:
        assert True not in seen.endpoints, f"a canary endpoint was ready: {seen}"
        assert seen.route.get(stable) == 100, f"the stable kept all the weight: {seen}"
        assert seen.route.get(canary, 0) == 0, f"no weight to the unready canary: {seen}"

    eventually(
        lambda: weights(kube, ns, name) == {stable: 100},
        30,
        "the canary's backendRef to leave the route",
    )
    eventually(
        lambda: canary not in services(kube, ns, name) and canary not in workloads(kube, ns, name),
        60,
        "the canary's Service and pods to be removed",
    )
    assert stable in services(kube, ns, name)


@pytest.mark.timeout(600)
def test_a_ready_canary_gets_its_step_weight_and_all_of_it_once_promoted(
    kube_cluster: KubeCluster, operator_namespace: str, versions: tuple[str, str]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    v1, v2 = versions
    name = "split"
    stable, canary = server_name(name, v1), server_name(name, v2)
    steps = [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
    create(kube, ns, deployment(name, v1, steps=steps, scaleDownDelaySeconds=0))
    serving(kube, ns, name, v1)

    act(kube, ns, name, {"spec": {"modelVersion": v2}})
    looks: list[Look] = []

    def paused() -> bool:
        looks.append(look(kube, ns, name, v2))
        status = looks[-1].status
        return status.get("phase") == "Paused" and status.get("currentStep") == 1

    eventually(paused, 240, "the canary's pods to be ready and the rollout to pause at 50", 0.5)
    assert any(
        seen.status.get("canaryWeight") == 50 and seen.route.get(canary) == 0 for seen in looks
    ), f"the step's weight waited for the canary's pods: {looks}"
    for seen in looks:
        if seen.route.get(canary, 0) > 0:
            assert seen.ready_replicas >= 1, f"weight only with a ready pod behind it: {seen}"

    assert weights(kube, ns, name) == {stable: 50, canary: 50}
    assert status_of(kube, ns, "deployments", name)["canaryWeight"] == 50
    per_version = services(kube, ns, name)
    assert per_version[stable][VERSION_LABEL] == v1
    assert per_version[canary][VERSION_LABEL] == v2
    assert endpoints(kube, ns, canary) == [True]
    assert endpoints(kube, ns, stable) == [True]

    routes = History(kube.custom.list_namespaced_custom_object, GATEWAY_API_GROUP, "v1", ns,
                     "httproutes")  # fmt: skip
    removed = History(kube.core.list_namespaced_service, ns,
                      selector=f"{DEPLOYMENT_LABEL}={name}")  # fmt: skip
    promote(kube, ns, name)
    eventually(
        lambda: (
            (s := status_of(kube, ns, "deployments", name)).get("stableVersion") == v2
            and not s.get("canaryVersion")
            and s.get("phase") == "Healthy"
        ),
        120,
        f"{v2} to be promoted",
    )
    eventually(lambda: weights(kube, ns, name) == {canary: 100}, 30, f"all the weight on {v2}")
    eventually(
        lambda: stable not in services(kube, ns, name) and stable not in workloads(kube, ns, name),
        60,
        f"{v1}'s Service and pods to be removed (scaleDownDelaySeconds 0)",
    )
    assert canary in services(kube, ns, name)
    routes.stop()
    removed.stop()
    deleted = [rv for rv, kind, body in removed.changes
               if kind == "DELETED" and body["metadata"]["name"] == stable]  # fmt: skip
    unrouted = [rv for rv, _, body in routes.changes
                if stable not in {ref["name"] for ref in body["spec"]["rules"][0]["backendRefs"]}]  # fmt: skip
    assert deleted and unrouted, (removed.changes, routes.changes)
    assert min(unrouted) < deleted[0], (
        f"the route must stop naming {stable} before its Service is deleted"
    )
