"""Caches that re-list correctly (issue 18 item 2): the API server restarts while children are
deleted behind it (straight in etcd, as another API server of an HA control plane would have
done), so every watch resumes with a 410 Gone, kopf lists again, and no list reports a deletion.
The operator still notices: the TrainingJob whose Job went ends `JobLost` instead of staying
`Suspended`, and the Deployment whose Service went gets it back.

It restarts the shared test cluster's kube-apiserver (`hack/cluster restart-apiserver`), which
interrupts whatever else runs on it for a few seconds: run it alone, and rarely."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from mlkube.controller.kube import Cluster
from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import (
    GROUP,
    ROOT,
    VERSION,
    condition,
    create,
    eventually,
    status_of,
)

pytestmark = pytest.mark.usefixtures("crds")

LOCAL_KUBECONFIG = Path.home() / ".cache/mlkube/cluster/admin.kubeconfig"
TRAINING = {
    "model": "held",
    "dataset": {"uri": "builtin:iris"},
    "estimator": {"className": "sklearn.naive_bayes.GaussianNB"},
    "suspend": True,
}


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.mark.timeout(600)
def test_children_deleted_while_the_api_server_was_down_are_noticed_after_the_relist(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    if Path(kube_cluster.kubeconfig).resolve() != LOCAL_KUBECONFIG.resolve():
        pytest.skip("restarts the local test cluster's kube-apiserver (hack/cluster)")
    kube, ns, cluster = kube_cluster, operator_namespace, Cluster(kube_cluster.kubeconfig)
    create(kube, ns, manifest("TrainingJob", "held", TRAINING))
    create(kube, ns, manifest("Deployment", "svc", {"modelVersion": "missing-v1"}))
    eventually(
        lambda: status_of(kube, ns, "trainingjobs", "held").get("phase") == "Suspended",
        60,
        "the TrainingJob's Job",
    )
    service = eventually(lambda: cluster.get("v1", "Service", ns, "svc"), 60, "the Service")
    assert cluster.get("batch/v1", "Job", ns, "held-train") is not None

    behind = (
        f"etcdctl del /registry/jobs/{ns}/held-train"
        f" && etcdctl del /registry/services/specs/{ns}/svc"
    )
    restart = subprocess.run(
        [str(ROOT / "hack/cluster"), "restart-apiserver", "--", "sh", "-c", behind],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert restart.returncode == 0, restart.stderr
    back = time.monotonic()
    assert cluster.get("batch/v1", "Job", ns, "held-train") is None, "deleted behind its back"

    failed = eventually(
        lambda: (s := status_of(kube, ns, "trainingjobs", "held")).get("phase") == "Failed" and s,
        120,
        "the TrainingJob to notice its Job is gone",
    )
    assert condition(failed, "Failed")["reason"] == "JobLost"
    noticed = time.monotonic() - back
    again = eventually(
        lambda: (
            (s := cluster.get("v1", "Service", ns, "svc")) is not None
            and s["metadata"]["uid"] != service["metadata"]["uid"]
            and s
        ),
        120,
        "the Service to be made again",
    )
    assert again["spec"]["selector"]["mlkube.io/deployment"] == "svc"
    print(
        f"after the API server answered again: JobLost in {noticed:.1f} s, "
        f"the Service back in {time.monotonic() - back:.1f} s",
        file=sys.__stdout__,
    )
