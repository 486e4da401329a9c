"""The operator converges whatever happens to what it made, and every wait says why and ends
(issue 18): a child deleted by hand is back within 5 s; a pod that cannot start (a quota, an
unschedulable request, an image that cannot be pulled) is named in its owner's condition, in
Kubernetes' own words, within 30 s; a first rollout whose pods never get ready fails at its
progress deadline."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from mlkube.builders.serving import server_name
from mlkube.contract import DEPLOYMENT_LABEL
from mlkube.controller.kube import Cluster
from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import (
    GROUP,
    VERSION,
    condition,
    create,
    eventually,
    status_of,
    training_finished,
)

pytestmark = pytest.mark.usefixtures("crds", "gateway_api_crds")

TRAINING = {
    "model": "iris",
    "dataset": {"uri": "builtin:iris"},
    "estimator": {"className": "sklearn.naive_bayes.GaussianNB"},
    "approvalPolicy": "AutoApproveOnGates",
}
GATEWAY = {"name": "mlkube-test-gateway"}
"""The route's parent; no Gateway of that name needs to exist for the API server to store it."""
TOO_BIG = {"requests": {"cpu": "64"}}
"""More CPU than the test node has: the scheduler cannot place the pod."""
NO_IMAGE = "localhost/mlkube-no-such-image:0"


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def namespaces(kube_cluster: KubeCluster) -> Iterator[tuple[str, str]]:
    """(a namespace, one whose ResourceQuota allows no pods)."""
    suffix = uuid.uuid4().hex[:6]
    names = (f"mlkube-converge-{suffix}", f"mlkube-quota-{suffix}")
    for name in names:
        kube_cluster.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
        )
    kube_cluster.core.create_namespaced_resource_quota(
        names[1],
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="q"),
            spec=client.V1ResourceQuotaSpec(hard={"pods": "0"}),
        ),
    )
    yield names
    for name in names:
        kube_cluster.core.delete_namespace(name)


@pytest.fixture(scope="module")
def operator(
    namespaces: tuple[str, str], runtime_image: str, kube_cluster: KubeCluster
) -> Iterator[KopfRunner]:
    """One in-process operator serving both namespaces."""
    os.environ.update(
        KUBECONFIG=kube_cluster.kubeconfig,
        MLKUBE_RUNTIME_IMAGE=runtime_image,
        MLKUBE_METRICS_PORT="0",
    )
    args = ["run", "--standalone", "-m", "mlkube.controller.main"]
    for name in namespaces:
        args += ["--namespace", name]
    with KopfRunner(args) as runner:
        yield runner


@pytest.fixture(scope="module")
def version(kube_cluster: KubeCluster, namespaces: tuple[str, str], operator: KopfRunner) -> str:
    """A trained, verified, approved ModelVersion in the first namespace."""
    kube, ns = kube_cluster, namespaces[0]
    create(kube, ns, manifest("TrainingJob", "iris", TRAINING))
    done = training_finished(kube, ns, "iris")
    assert done["phase"] == "Succeeded", done
    name = str(done["modelVersion"])
    eventually(
        lambda: (
            condition(status_of(kube, ns, "modelversions", name), "Ready").get("status") == "True"
        ),
        120,
        f"{name} to be verified",
    )
    return name


def uid(cluster: Cluster, api_version: str, kind: str, ns: str, name: str) -> str | None:
    found = cluster.get(api_version, kind, ns, name)
    return None if found is None else str(found["metadata"]["uid"])


@pytest.mark.timeout(600)
def test_every_deleted_child_is_back_within_5_seconds(
    kube_cluster: KubeCluster, namespaces: tuple[str, str], version: str
) -> None:
    kube, ns, cluster = kube_cluster, namespaces[0], Cluster(kube_cluster.kubeconfig)
    spec = {
        "modelVersion": version,
        "traffic": "GatewayAPI",
        "gateway": GATEWAY,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
    }
    create(kube, ns, manifest("Deployment", "iris", spec))
    monitor = {
        "deployment": "iris",
        "schedule": "0 3 * * *",
        "reference": {"uri": f"file:///var/lib/mlkube/artifacts/{ns}/reference.parquet"},
    }
    create(kube, ns, manifest("DriftMonitor", "watch", monitor))
    children = [
        ("v1", "Service", "iris"),
        ("v1", "Service", server_name("iris", version)),
        ("gateway.networking.k8s.io/v1", "HTTPRoute", "iris"),
        ("autoscaling/v2", "HorizontalPodAutoscaler", "iris"),
        ("networking.k8s.io/v1", "NetworkPolicy", "iris"),
        ("apps/v1", "Deployment", server_name("iris", version)),
        ("batch/v1", "CronJob", "watch-drift"),
    ]
    before = eventually(
        lambda: all(uids := [uid(cluster, *c[:2], ns, c[2]) for c in children]) and uids,
        120,
        "every child",
    )
    back = {}
    for (api_version, kind, name), old in zip(children, before, strict=True):
        cluster.delete(api_version, kind, ns, name)
        deleted = time.monotonic()
        eventually(
            lambda: uid(cluster, api_version, kind, ns, name) not in (None, old),  # noqa: B023
            30,
            f"{kind} {name} to be made again",
            interval=0.1,
        )
        back[f"{kind} {name}"] = round(time.monotonic() - deleted, 2)
    print(f"deleted children back after (s): {back}", file=sys.__stdout__)
    assert max(back.values()) <= 5.0, back

    # a hand edit of a child that keeps no metadata.generation (Service, HPA) is put back too
    edits: dict[tuple[str, str, str], tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = {
        ("v1", "Service", "iris"): (
            {"spec": {"selector": {DEPLOYMENT_LABEL: "someone-else"}}},
            lambda child: child["spec"]["selector"].get(DEPLOYMENT_LABEL) == "iris",
        ),
        ("autoscaling/v2", "HorizontalPodAutoscaler", "iris"): (
            {"spec": {"maxReplicas": 40}},
            lambda child: child["spec"]["maxReplicas"] == 2,
        ),
    }
    undone = {}
    for (api_version, kind, name), (patch, restored) in edits.items():
        cluster.patch(api_version, kind, ns, name, patch)
        edited = time.monotonic()
        eventually(
            lambda: restored(cluster.get(api_version, kind, ns, name) or {"spec": {}}),  # noqa: B023
            60,
            f"{kind} {name}'s hand edit to be put back",
            interval=0.1,
        )
        undone[f"{kind} {name}"] = round(time.monotonic() - edited, 2)
    print(f"hand edits put back after (s): {undone}", file=sys.__stdout__)
    assert max(undone.values()) <= 5.0, undone


def reason_within(
    kube: KubeCluster, ns: str, plural: str, name: str, type_: str, reason: str, seconds: float
) -> dict[str, Any]:
    found: dict[str, Any] = eventually(
        lambda: (
            (c := condition(status_of(kube, ns, plural, name), type_)).get("reason") == reason and c
        ),
        seconds,
        f"{plural} {name}: {type_} {reason}",
        interval=0.5,
    )
    return found


@pytest.mark.timeout(300)
def test_a_quota_that_allows_no_pods_is_named_for_training_verification_and_drift_runs(
    kube_cluster: KubeCluster, namespaces: tuple[str, str], operator: KopfRunner
) -> None:
    kube, ns = kube_cluster, namespaces[1]
    quota = "exceeded quota: q, requested: pods=1, used: pods=0, limited: pods=0"

    create(kube, ns, manifest("TrainingJob", "held", {**TRAINING, "model": "held"}))
    succeeded = reason_within(kube, ns, "trainingjobs", "held", "Succeeded", "FailedCreate", 30)
    assert quota in succeeded["message"], succeeded
    status = status_of(kube, ns, "trainingjobs", "held")
    assert status["phase"] == "Pending"
    assert status["progress"].startswith("the trainer pod cannot start: Error creating: pods")

    mv = {
        "model": "held", "version": 1, "task": "classification",
        "artifact": {"uri": f"file:///var/lib/mlkube/artifacts/{ns}/held/1", "sha256": "a" * 64},
        "framework": {"version": "1.9.1"},
        "inputSchema": [{"name": "x", "type": "float"}],
    }  # fmt: skip
    create(kube, ns, manifest("ModelVersion", "held-v1", mv))
    ready = reason_within(kube, ns, "modelversions", "held-v1", "Ready", "FailedCreate", 30)
    assert ready["status"] == "False"
    assert (
        ready["message"].startswith("the verify pod cannot start: ") and quota in ready["message"]
    )

    monitor = {
        "deployment": "iris",
        "schedule": "* * * * *",
        "reference": {"uri": f"file:///var/lib/mlkube/artifacts/{ns}/reference.parquet"},
    }
    create(kube, ns, manifest("DriftMonitor", "every-minute", monitor))
    run = eventually(
        lambda: (
            kube.batch.list_namespaced_job(
                ns, label_selector="mlkube.io/driftmonitor=every-minute"
            ).items
        ),
        150,
        "the CronJob's first run",
    )
    started = time.monotonic()
    ready = reason_within(kube, ns, "driftmonitors", "every-minute", "Ready", "FailedCreate", 30)
    assert ready["message"].startswith(f"drift run {run[0].metadata.name} cannot start: ")
    assert quota in ready["message"]
    print(
        f"drift run refused by the quota named after {time.monotonic() - started:.1f} s",
        file=sys.__stdout__,
    )


@pytest.mark.timeout(300)
def test_an_unschedulable_pod_is_named_for_training_and_serving(
    kube_cluster: KubeCluster, namespaces: tuple[str, str], version: str
) -> None:
    kube, ns = kube_cluster, namespaces[0]
    create(
        kube, ns, manifest("TrainingJob", "big", {**TRAINING, "model": "big", "resources": TOO_BIG})
    )
    create(kube, ns, manifest("Deployment", "big", {"modelVersion": version, "resources": TOO_BIG}))
    started = time.monotonic()
    training = reason_within(kube, ns, "trainingjobs", "big", "Succeeded", "Unschedulable", 30)
    assert "Insufficient cpu" in training["message"], training
    serving = reason_within(
        kube, ns, "deployments", "big", "Ready", "Unschedulable", 30 - (time.monotonic() - started)
    )
    assert serving["message"].startswith(
        f"{version} has no ready pod yet: Unschedulable: 0/1 nodes"
    )
    assert "Insufficient cpu" in serving["message"]


@pytest.mark.timeout(300)
def test_a_first_rollout_that_cannot_pull_its_image_is_named_then_fails_at_its_deadline(
    kube_cluster: KubeCluster, namespaces: tuple[str, str], version: str
) -> None:
    kube, ns = kube_cluster, namespaces[0]
    spec = {
        "modelVersion": version,
        "image": NO_IMAGE,
        "strategy": {"canary": {"progressDeadlineSeconds": 45}},
    }
    create(kube, ns, manifest("Deployment", "noimage", spec))
    created = time.monotonic()
    ready = reason_within(kube, ns, "deployments", "noimage", "Ready", "ImagePullFailed", 30)
    assert NO_IMAGE in ready["message"], ready
    assert status_of(kube, ns, "deployments", "noimage")["phase"] == "Progressing"

    degraded = reason_within(
        kube, ns, "deployments", "noimage", "Degraded", "ProgressDeadlineExceeded", 45 + 20
    )
    waited = time.monotonic() - created
    assert waited >= 44, "not before its deadline"
    assert degraded["message"].startswith(f"0 of 1 pods of {version} ready after 45s")
    assert "ImagePullFailed" in degraded["message"]
    status = status_of(kube, ns, "deployments", "noimage")
    assert status["phase"] == "Degraded"
    assert condition(status, "Progressing")["reason"] == "ProgressDeadlineExceeded"
    events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=noimage").items
    assert [e.type for e in events if e.reason == "ProgressDeadlineExceeded"] == ["Warning"]
