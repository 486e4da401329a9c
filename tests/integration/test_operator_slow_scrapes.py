"""A tenant whose canary pods answer /metrics a byte a second delays no other tenant (issue 16,
item 1), on the real cluster: pods in namespace A drip their answer through the API server's pod
proxy to Deployments in analysis, while TrainingJobs in namespace B get their Job as fast as
without them. The operator runs in-process with two workers, so without the per-namespace lane
A's scrapes would hold both."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import GROUP, VERSION, create, eventually, status_of

pytestmark = pytest.mark.usefixtures("crds")

SLOW = 3
"""Deployments in analysis in namespace A, each with one dripping pod: more than the workers."""
DRIP = """
import socket, threading, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 3000))
server.listen(64)
def drip(conn):
    try:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n")
        while True:
            conn.sendall(b"#")
            time.sleep(1)
    except OSError:
        conn.close()
while True:
    threading.Thread(target=drip, args=(server.accept()[0],), daemon=True).start()
"""
SHA = "0" * 64


def namespace(kube: KubeCluster) -> str:
    name = f"mlkube-scrape-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def model_version(kube: KubeCluster, ns: str, version: int) -> None:
    """A ModelVersion already verified (no verify Job: its digest is the one recorded)."""
    name = f"slow-v{version}"
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": name},
        "spec": {
            "model": "slow", "version": version, "task": "classification",
            "artifact": {"uri": f"file:///var/lib/mlkube/artifacts/{ns}/slow/{version}", "sha256": SHA},
            "framework": {"version": "1.9.1", "pythonVersion": "3.11.7"},
            "inputSchema": [{"name": "x", "type": "float"}],
        },
    })  # fmt: skip
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, "modelversions", name, {
        "status": {
            "phase": "Ready", "verifiedSha256": SHA, "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "ArtifactVerified",
                            "message": "", "lastTransitionTime": now, "observedGeneration": 1}],
        },
    })  # fmt: skip


def in_analysis(kube: KubeCluster, ns: str, name: str) -> None:
    """A Deployment whose canary slow-v2 is at an analysis step, looking every second."""
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "modelVersion": "slow-v2", "replicas": 0, "requireApproval": False,
            "strategy": {"canary": {
                "steps": [{"analysis": {}}],
                "analysis": {"intervalSeconds": 1, "inconclusiveLimit": 1000},
            }},
        },
    })  # fmt: skip
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, "deployments", name, {
        "status": {"stableVersion": "slow-v1", "canaryVersion": "slow-v2", "currentStep": 0,
                   "canaryWeight": 0, "stepStartedAt": now},
    })  # fmt: skip


def dripping_pod(kube: KubeCluster, ns: str, deployment: str, image: str) -> None:
    """Labelled as the canary's server pod, so the operator scrapes it."""
    labels = {"mlkube.io/deployment": deployment, "mlkube.io/model-version": "slow-v2"}
    kube.core.create_namespaced_pod(ns, {
        "metadata": {"name": f"{deployment}-drip", "labels": labels},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "drip", "image": image, "imagePullPolicy": "IfNotPresent",
                            "command": ["python", "-c", DRIP]}],
        },
    })  # fmt: skip


def time_to_job(kube: KubeCluster, ns: str, name: str) -> float:
    """Seconds from creating a (suspended) TrainingJob to its Job existing."""
    started = time.monotonic()
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"model": "iris", "dataset": {"uri": "builtin:iris"}, "suspend": True,
                 "estimator": {"className": "sklearn.naive_bayes.GaussianNB"}},
    })  # fmt: skip
    selector = f"mlkube.io/trainingjob={name}"
    eventually(
        lambda: kube.batch.list_namespaced_job(ns, label_selector=selector).items,
        30,
        f"the Job of {name}",
        interval=0.05,
    )
    return time.monotonic() - started


@pytest.fixture(scope="module")
def tenants(kube_cluster: KubeCluster, runtime_image: str) -> Iterator[tuple[str, str]]:
    """Namespaces A (slow canaries set up before the operator starts) and B, and the operator
    (two workers) watching both."""
    a, b = namespace(kube_cluster), namespace(kube_cluster)
    model_version(kube_cluster, a, 1)
    model_version(kube_cluster, a, 2)
    for i in range(SLOW):
        in_analysis(kube_cluster, a, f"slow-{i}")
    saved = {k: os.environ.get(k) for k in ("MLKUBE_WORKERS", "MLKUBE_METRICS_PORT")}
    os.environ.update(
        MLKUBE_WORKERS="2", MLKUBE_METRICS_PORT="0", MLKUBE_RUNTIME_IMAGE=runtime_image
    )
    runner = KopfRunner(
        ["run", "--standalone", "--namespace", a, "--namespace", b, "-m", "mlkube.controller.main"]
    )
    try:
        with runner:
            yield a, b
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for ns in (a, b):
            kube_cluster.core.delete_namespace(ns, propagation_policy="Background")


@pytest.mark.timeout(240)
def test_a_tenants_dripping_metrics_never_delay_another_tenants_reconcile(
    kube_cluster: KubeCluster, tenants: tuple[str, str], runtime_image: str
) -> None:
    kube, (a, b) = kube_cluster, tenants
    eventually(
        lambda: all(
            (status_of(kube, a, "deployments", f"slow-{i}").get("lastAnalysis") or {}).get("result")
            == "Inconclusive"
            for i in range(SLOW)
        ),
        60,
        "A's canaries to be analysed (no pods yet: nothing to scrape)",
    )
    before = [time_to_job(kube, b, f"before-{i}") for i in range(3)]

    for i in range(SLOW):
        dripping_pod(kube, a, f"slow-{i}", runtime_image)
    eventually(
        lambda: all(p.status.phase == "Running" for p in kube.core.list_namespaced_pod(a).items),
        90,
        "the dripping pods to run",
    )

    def cut_off() -> list[Any]:
        return [
            e for e in kube.core.list_namespaced_event(a).items if e.reason == "ScrapeLimitExceeded"
        ]

    events = eventually(cut_off, 30, "a scrape of a dripping pod to be cut off")
    assert "within 5s (scrape timeout)" in events[0].message, events[0].message
    assert "analysis inconclusive" in events[0].message
    during = []
    for i in range(3):
        time.sleep(1.3)  # a different moment of A's 5 s scrapes each time
        during.append(time_to_job(kube, b, f"during-{i}"))
    figures = f"B's TrainingJob to its Job (s): without A's dripping pods {before}, with {during}"
    print(figures, file=sys.__stderr__)  # kopf's runner holds sys.stdout and sys.stderr
    assert max(during) <= max(before) + 2.0, (before, during)
    still = status_of(kube, a, "deployments", "slow-0")
    assert still["canaryVersion"] == "slow-v2"
    assert still["lastAnalysis"]["result"] == "Inconclusive"
