"""Rollouts that fail safe, on the real cluster with real server pods (issue 8, items 3 and 4):
a canary that cannot start rolls back at its deadline without costing the stable a pod, and an
HPA-managed stable is never scaled by the operator."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

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

pytestmark = pytest.mark.usefixtures("crds")


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def trained(kube: KubeCluster, ns: str, name: str) -> str:
    spec = {
        "model": "iris",
        "dataset": {"uri": "builtin:iris"},
        "estimator": {"className": "sklearn.naive_bayes.GaussianNB"},
        "approvalPolicy": "AutoApproveOnGates",
    }
    create(kube, ns, manifest("TrainingJob", name, spec))
    done = training_finished(kube, ns, name)
    assert done["phase"] == "Succeeded", done
    version = str(done["modelVersion"])
    eventually(
        lambda: (
            condition(status_of(kube, ns, "modelversions", version), "Ready").get("status")
            == "True"
        ),
        120,
        f"{version} to be verified",
    )
    return version


def hpas(kube: KubeCluster) -> Any:
    return client.AutoscalingV2Api(kube.api_client)


def replicas(kube: KubeCluster, ns: str, name: str) -> tuple[int, int]:
    d = kube.apps.read_namespaced_deployment(name, ns)
    return d.spec.replicas, d.status.ready_replicas or 0


@pytest.mark.timeout(900)
def test_rollouts_fail_safe_and_leave_the_hpa_alone(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    v1, v2 = trained(kube, ns, "iris-a"), trained(kube, ns, "iris-b")

    # -- a canary whose pods can never start (a quota admits no more pods) -------------------
    steps = [{"setWeight": 50}, {"pause": {"seconds": 5}}, {"analysis": {}}, {"setWeight": 100}]
    create(kube, ns, manifest("Deployment", "safe", {
        "modelVersion": v1, "replicas": 2,
        "strategy": {"canary": {"steps": steps, "progressDeadlineSeconds": 30}},
    }))  # fmt: skip
    eventually(
        lambda: status_of(kube, ns, "deployments", "safe").get("phase") == "Healthy",
        240,
        "the stable to serve with 2 pods",
    )
    kube.core.create_namespaced_resource_quota(
        ns, {"metadata": {"name": "no-more-pods"}, "spec": {"hard": {"pods": "2"}}}
    )
    try:
        eventually(
            lambda: (kube.core.read_namespaced_resource_quota("no-more-pods", ns).status.used or {}).get("pods") == "2",
            60,
            "the quota to count the stable's pods (until then it admits any pod)",
        )  # fmt: skip
        kube.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "deployments", "safe", {"spec": {"modelVersion": v2}}
        )
        stable_counts = set()

        def rolled_back() -> dict[str, Any] | None:
            stable_counts.add(replicas(kube, ns, f"safe-{v1}"))
            s = status_of(kube, ns, "deployments", "safe")
            return s if s.get("abortedVersion") == v2 else None

        degraded = eventually(rolled_back, 120, "the canary to hit its progress deadline")
        assert stable_counts == {(2, 2)}, f"the stable kept both pods throughout: {stable_counts}"
        reason = condition(degraded, "Degraded")
        assert reason["reason"] == "ProgressDeadlineExceeded"
        assert "after 30s" in reason["message"]
        assert degraded["stableVersion"] == v1
        eventually(
            lambda: any(
                e.type == "Warning" and e.reason == "ProgressDeadlineExceeded"
                for e in kube.core.list_namespaced_event(
                    ns, field_selector="involvedObject.name=safe"
                ).items
            ),
            10,
            "a ProgressDeadlineExceeded Warning event",
        )
        eventually(
            lambda: f"safe-{v2}" not in {d.metadata.name for d in kube.apps.list_namespaced_deployment(ns).items},
            60,
            "the canary's pods to be removed",
        )  # fmt: skip
    finally:
        kube.core.delete_namespaced_resource_quota("no-more-pods", ns)

    # -- the HPA owns the stable's replicas --------------------------------------------------
    create(kube, ns, manifest("Deployment", "scaled", {
        "modelVersion": v1, "replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 5},
    }))  # fmt: skip
    eventually(
        lambda: status_of(kube, ns, "deployments", "scaled").get("phase") == "Healthy",
        240,
        "the autoscaled Deployment to serve",
    )
    assert hpas(kube).read_namespaced_horizontal_pod_autoscaler("scaled", ns)
    kube.apps.patch_namespaced_deployment_scale(f"scaled-{v1}", ns, {"spec": {"replicas": 4}})
    # a spec edit makes the operator reconcile (and re-apply) while the count is 4
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "deployments", "scaled",
        {"spec": {"resources": {"requests": {"cpu": "50m", "memory": "200Mi"}}}},
    )  # fmt: skip
    time.sleep(25)
    assert replicas(kube, ns, f"scaled-{v1}")[0] == 4, "scaling by hand is not undone"
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "deployments", "scaled", {"spec": {"autoscaling": None}}
    )
    eventually(
        lambda: not hpas(kube).list_namespaced_horizontal_pod_autoscaler(ns).items,
        60,
        "the HPA to be removed with autoscaling",
    )


def pods_of(kube: KubeCluster, ns: str, deployment: str, version: str) -> list[Any]:
    selector = f"mlkube.io/deployment={deployment},mlkube.io/model-version={version}"
    return list(kube.core.list_namespaced_pod(ns, label_selector=selector).items)


@pytest.mark.timeout(900)
def test_schema_changes_are_refused_and_a_warm_stable_never_takes_traffic_again(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    three = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm"]
    spec = {
        "model": "narrow",
        "dataset": {"uri": "builtin:iris"},
        "estimator": {"className": "sklearn.naive_bayes.GaussianNB"},
        "approvalPolicy": "AutoApproveOnGates",
    }
    create(kube, ns, manifest("TrainingJob", "narrow-a", {**spec, "features": three}))
    create(kube, ns, manifest("TrainingJob", "narrow-b", spec))
    for name in ("narrow-a", "narrow-b"):
        assert training_finished(kube, ns, name)["phase"] == "Succeeded"
    for version in ("narrow-v1", "narrow-v2"):
        eventually(
            lambda v=version: condition(status_of(kube, ns, "modelversions", v), "Ready").get("status") == "True",
            120,
            f"{version} to be verified",
        )  # fmt: skip
    create(kube, ns, manifest("Deployment", "narrow", {"modelVersion": "narrow-v1", "replicas": 1}))
    eventually(
        lambda: status_of(kube, ns, "deployments", "narrow").get("phase") == "Healthy",
        240,
        "v1 to serve",
    )

    # v2 needs petal_width_cm, which production's requests to v1 never carried
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "deployments", "narrow", {"spec": {"modelVersion": "narrow-v2"}}
    )
    refused = eventually(
        lambda: (
            condition(status_of(kube, ns, "deployments", "narrow"), "Degraded").get("reason")
            == "SchemaIncompatible"
            and status_of(kube, ns, "deployments", "narrow")
        ),
        60,
        "v2 to be refused",
    )
    assert "petal_width_cm" in condition(refused, "Degraded")["message"]
    assert refused["stableVersion"] == "narrow-v1"
    assert pods_of(kube, ns, "narrow", "narrow-v2") == []

    # allowed: promoted once ready; v1 stays warm, out of traffic, even in pods made later
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "deployments", "narrow",
        {"spec": {"strategy": {"canary": {"allowSchemaChanges": True, "scaleDownDelaySeconds": 40}}}},
    )  # fmt: skip
    eventually(
        lambda: status_of(kube, ns, "deployments", "narrow").get("stableVersion") == "narrow-v2",
        240,
        "v2 to be promoted",
    )
    eventually(
        lambda: [p.metadata.labels["mlkube.io/traffic"] for p in pods_of(kube, ns, "narrow", "narrow-v1")] == ["off"],
        30,
        "the warm v1 pod out of traffic",
    )  # fmt: skip
    old = pods_of(kube, ns, "narrow", "narrow-v1")[0].metadata.name
    kube.core.delete_namespaced_pod(old, ns, grace_period_seconds=0)
    replacement = eventually(
        lambda: [p for p in pods_of(kube, ns, "narrow", "narrow-v1") if p.metadata.name != old],
        30,
        "v1's replacement pod",
    )[0]
    labelled = eventually(
        lambda: kube.core.read_namespaced_pod(replacement.metadata.name, ns).metadata.labels.get("mlkube.io/traffic") == "off"
        and kube.core.read_namespaced_pod(replacement.metadata.name, ns),
        20,
        "the new warm pod to be taken out of traffic",
    )  # fmt: skip
    ready = [c for c in labelled.status.conditions or [] if c.type == "Ready"]
    assert not ready or ready[0].status != "True", "out of traffic before it could answer"
    eventually(
        lambda: (
            not any(
                d.metadata.name == "narrow-narrow-v1"
                for d in kube.apps.list_namespaced_deployment(ns).items
            )
        ),
        120,
        "v1 to be scaled down after the delay, with modelVersion pinned",
    )
