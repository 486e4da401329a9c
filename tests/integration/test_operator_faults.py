"""The operator's failure paths on the real cluster, each kind of fault as a new user met it
(issue 8): refused children, suspend, a canary that cannot start, the HPA, jobs that disappear,
versions claimed at the same instant, a pod that never answers its /metrics."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

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

pytestmark = pytest.mark.usefixtures("crds")

TRAINING = {
    "model": "iris",
    "dataset": {"uri": "builtin:iris"},
    "estimator": {"className": "sklearn.naive_bayes.GaussianNB"},
    "approvalPolicy": "AutoApproveOnGates",
}


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def patch_spec(kube: KubeCluster, ns: str, plural: str, name: str, spec: dict[str, Any]) -> None:
    kube.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, plural, name, {"spec": spec})


def events_for(kube: KubeCluster, ns: str, name: str) -> list[tuple[str, str, str]]:
    items = kube.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [(e.type, e.reason, e.message) for e in items]


@pytest.fixture
def refusing_policy(kube_cluster: KubeCluster, operator_namespace: str) -> Iterator[None]:
    """A platform policy (a ValidatingAdmissionPolicy, as Kyverno or Gatekeeper would be) that
    refuses children the operator makes: the API server's 422 is what the operator must handle."""
    api = client.AdmissionregistrationV1Api(kube_cluster.api_client)
    name = f"mlkube-test-refuse-{uuid.uuid4().hex[:6]}"
    api.create_validating_admission_policy(
        {
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["batch"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["jobs", "cronjobs"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "object.kind != 'Job' || !object.spec.template.spec.containers.exists(c, has(c.resources.requests) && 'cpu' in c.resources.requests && c.resources.requests['cpu'] == '3')",
                        "message": "a cpu request of 3 is not allowed in this namespace",
                        "reason": "Invalid",
                    },
                    {
                        "expression": "object.kind != 'CronJob' || object.spec.schedule != '0 0 30 2 *'",
                        "message": "a schedule that never runs is not allowed in this namespace",
                        "reason": "Invalid",
                    },
                ],
            },
        }
    )
    api.create_validating_admission_policy_binding(
        {
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": operator_namespace}
                    }
                },
            },
        }
    )
    time.sleep(3)  # the policy reaches the API server's admission chain
    yield
    api.delete_validating_admission_policy_binding(name)
    api.delete_validating_admission_policy(name)


@pytest.mark.timeout(300)
def test_a_refused_child_ends_in_invalid_spec_backs_off_and_recovers_when_fixed(
    kube_cluster: KubeCluster,
    operator_namespace: str,
    operator: dict[str, KopfRunner],
    refusing_policy: None,
) -> None:
    kube, ns = kube_cluster, operator_namespace
    spec = {
        **TRAINING,
        "model": "refused",
        "suspend": True,
        "resources": {"requests": {"cpu": "3"}},
    }
    create(kube, ns, manifest("TrainingJob", "refused", spec))
    failed = eventually(
        lambda: (
            condition(status_of(kube, ns, "trainingjobs", "refused"), "Failed").get("reason")
            == "InvalidSpec"
            and status_of(kube, ns, "trainingjobs", "refused")
        ),
        60,
        "the refused Job to end in InvalidSpec",
    )
    message = condition(failed, "Failed")["message"]
    assert "a cpu request of 3 is not allowed in this namespace" in message, message
    assert message.startswith("Job refused-train: "), "names the child"
    assert failed["phase"] == "Failed"
    claimed = failed["version"]
    time.sleep(10)
    again = status_of(kube, ns, "trainingjobs", "refused")
    assert again["version"] == claimed, "retries never claim another version"
    warnings = [e for e in events_for(kube, ns, "refused") if e[1] == "InvalidSpec"]
    assert len(warnings) == 1, f"said once, not every retry: {warnings}"

    patch_spec(kube, ns, "trainingjobs", "refused", {"resources": {"requests": {"cpu": "100m"}}})
    fixed = eventually(
        lambda: (
            (s := status_of(kube, ns, "trainingjobs", "refused")).get("phase") == "Suspended" and s
        ),
        60,
        "the fixed TrainingJob to get its Job",
    )
    assert fixed["version"] == claimed
    assert fixed["observedGeneration"] == 2

    dm_spec = {
        "deployment": "iris",
        "schedule": "0 0 30 2 *",
        "reference": {"uri": f"file:///var/lib/mlkube/artifacts/{ns}/reference.parquet"},
    }
    create(kube, ns, manifest("DriftMonitor", "never", dm_spec))
    ready = eventually(
        lambda: (
            condition(status_of(kube, ns, "driftmonitors", "never"), "Ready").get("reason")
            == "InvalidSpec"
            and condition(status_of(kube, ns, "driftmonitors", "never"), "Ready")
        ),
        60,
        "the refused CronJob to end in InvalidSpec",
    )
    assert ready["status"] == "False"
    assert "a schedule that never runs" in ready["message"]
    patch_spec(kube, ns, "driftmonitors", "never", {"schedule": "*/10 * * * *"})
    eventually(
        lambda: (
            condition(status_of(kube, ns, "driftmonitors", "never"), "Ready").get("status")
            == "True"
        ),
        60,
        "the fixed DriftMonitor to be Scheduled",
    )


@pytest.mark.timeout(120)
def test_a_long_driftmonitor_name_still_gets_its_cronjob(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    name = "fraud-transactions-eu-west-1-gradient-boost-watch"
    spec = {
        "deployment": "fraud",
        "reference": {"uri": f"file:///var/lib/mlkube/artifacts/{ns}/reference.parquet"},
    }
    create(kube, ns, manifest("DriftMonitor", name, spec))
    scheduled = eventually(
        lambda: (s := status_of(kube, ns, "driftmonitors", name)).get("cronJobName") and s,
        60,
        "the CronJob",
    )
    assert len(scheduled["cronJobName"]) <= 52
    assert condition(scheduled, "Ready")["status"] == "True"
    assert kube.batch.read_namespaced_cron_job(scheduled["cronJobName"], ns) is not None


@pytest.mark.timeout(400)
def test_resuming_a_suspended_trainingjob_trains(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    create(
        kube, ns, manifest("TrainingJob", "later", {**TRAINING, "model": "later", "suspend": True})
    )
    eventually(
        lambda: status_of(kube, ns, "trainingjobs", "later").get("phase") == "Suspended",
        60,
        "the TrainingJob to be Suspended",
    )
    assert kube.batch.read_namespaced_job("later-train", ns).spec.suspend is True
    patch_spec(kube, ns, "trainingjobs", "later", {"suspend": False})
    done = training_finished(kube, ns, "later")
    assert done["phase"] == "Succeeded", done
    assert done["observedGeneration"] == 2
    assert done["modelVersion"] == "later-v1"


@pytest.mark.timeout(120)
def test_a_job_that_disappears_is_never_retrained_under_a_new_version(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    create(
        kube, ns, manifest("TrainingJob", "lost", {**TRAINING, "model": "lost", "suspend": True})
    )
    eventually(
        lambda: status_of(kube, ns, "trainingjobs", "lost").get("phase") == "Suspended",
        60,
        "the Job",
    )
    kube.batch.delete_namespaced_job("lost-train", ns, propagation_policy="Background")
    failed = eventually(
        lambda: (s := status_of(kube, ns, "trainingjobs", "lost")).get("phase") == "Failed" and s,
        60,
        "the TrainingJob to notice",
    )
    assert condition(failed, "Failed")["reason"] == "JobLost"
    assert failed["version"] == 1
    time.sleep(5)
    jobs = kube.batch.list_namespaced_job(ns, label_selector="mlkube.io/trainingjob=lost").items
    assert jobs == [], "no new Job, no new version"


@pytest.mark.timeout(120)
def test_trainingjobs_created_at_the_same_instant_get_different_versions(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    names = [f"burst-{i}" for i in range(6)]
    spec = {**TRAINING, "model": "burst", "suspend": True}
    threads = [
        threading.Thread(target=create, args=(kube, ns, manifest("TrainingJob", n, spec)))
        for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = eventually(
        lambda: (
            all(status_of(kube, ns, "trainingjobs", n).get("version") for n in names)
            and [status_of(kube, ns, "trainingjobs", n)["version"] for n in names]
        ),
        60,
        "every TrainingJob to claim a version",
    )
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]


@pytest.mark.timeout(120)
def test_a_pod_that_never_answers_costs_a_scrape_seconds_not_a_reconcile(
    kube_cluster: KubeCluster, operator_namespace: str, runtime_image: str
) -> None:
    """A server that accepts the connection and never answers, reached through the pod proxy."""
    kube, ns = kube_cluster, operator_namespace
    hang = (
        "import socket, time\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 3000)); s.listen(16)\n"
        "held = []\n"
        "while True: held.append(s.accept())\n"
    )
    kube.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "hung"},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "hung",
                        "image": runtime_image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-c", hang],
                    }
                ],
            },
        },
    )
    eventually(
        lambda: kube.core.read_namespaced_pod("hung", ns).status.phase == "Running",
        60,
        "the hung pod to run",
    )
    cluster = Cluster(kube_cluster.kubeconfig)
    started = time.monotonic()
    assert "scrape timeout" in cluster.scrape(ns, ["hung"], 3000, 3.0, 1 << 20).exceeded["hung"]
    assert time.monotonic() - started < 8, "a scrape gives up after its timeout"
