"""Each image's real command runs as any non-root uid, with or without a passwd entry.

The pods run as the operator's own pods do (`mlkube.builders.common`): a namespace that enforces
the restricted Pod Security Standard, a read-only root file system and an emptyDir /tmp. Two
identities, neither with a passwd entry in the images: uid 65532 (the images' USER and the chart's
runAsUser) and an OpenShift-style random uid in group 0. Without USER, LOGNAME and HOME in the
images, kopf crashed on `getpwuid(): uid not found: 65532`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from mlkube.builders.common import restricted_security_context
from tests.cluster.fixtures import KubeCluster, pod_logs, wait_pod_phase, wait_until

pytestmark = pytest.mark.integration

IDENTITIES = [
    pytest.param((65532, 65532), id="uid-65532"),
    pytest.param((1000680000, 0), id="openshift-uid-1000680000-gid-0"),
]
HEALTH_PORT = 8081

TRAIN_SPEC = {
    "model": "iris",
    "dataset": {"uri": "builtin:iris"},
    "target": "target",
    "estimator": {
        "className": "sklearn.linear_model.LogisticRegression",
        "hyperparameters": {"max_iter": 500},
    },
}
DRIFT_SPEC = {"deployment": "iris", "schedule": "*/10 * * * *", "minRows": 10}

# Runs in the runtime image: each step is the `mlkube-runtime` command the operator's pods run.
RUNTIME_STEPS = r"""
import json, os, signal, subprocess, time, urllib.request

def run(*args):
    out = subprocess.run(["mlkube-runtime", *args], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])

trained = run("train", "--spec", "env:TRAIN_SPEC", "--artifact-root", "/tmp/artifacts",
              "--namespace", "images", "--result-file", "/tmp/train.json")
verified = run("verify", "--uri", trained["artifactUri"], "--sha256", trained["sha256"],
               "--result-file", "/tmp/verify.json")
server = subprocess.Popen(["mlkube-runtime", "serve", "--port", "3000"], env={
    **os.environ, "MLKUBE_MODEL_URI": trained["artifactUri"],
    "MLKUBE_MODEL_SHA256": trained["sha256"], "MLKUBE_INFERENCE_LOG_URI": "/tmp/inference-log"})
deadline = time.monotonic() + 180
while True:
    try:
        ready = urllib.request.urlopen("http://127.0.0.1:3000/readyz", timeout=5).status
        break
    except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
            raise
        time.sleep(0.5)
rows = [{name: 1.0 for name, _ in trained["columns"]}] * 20
request = urllib.request.Request("http://127.0.0.1:3000/predict",
    json.dumps({"instances": rows}).encode(), {"Content-Type": "application/json"})
predictions = json.load(urllib.request.urlopen(request, timeout=30))["predictions"]
server.send_signal(signal.SIGTERM)
server.wait(60)
drift = run("drift", "--spec", "env:DRIFT_SPEC", "--reference",
            trained["artifactUri"] + "/reference.parquet", "--log", "/tmp/inference-log",
            "--result-file", "/tmp/drift.json")
print(json.dumps({"trained": trained["status"], "verified": verified["status"],
                  "readyz": ready, "predictions": len(predictions),
                  "drift": drift["verdict"], "driftRows": drift["rows"]}))
"""


@pytest.fixture
def restricted_namespace(kube_cluster: KubeCluster, namespace: str) -> str:
    """The test namespace, enforcing the restricted Pod Security Standard."""
    kube_cluster.core.patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    return namespace


def restricted_pod(
    name: str, container: dict[str, Any], uid: int, gid: int, **spec: Any
) -> dict[str, Any]:
    """A pod as our builders make them, running as `uid`:`gid`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": uid,
                "runAsGroup": gid,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    **container,
                    "imagePullPolicy": "IfNotPresent",
                    "securityContext": restricted_security_context(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
            **spec,
        },
    }


@pytest.mark.parametrize("identity", IDENTITIES)
def test_runtime_image_trains_verifies_serves_and_checks_drift_as_any_uid(
    kube_cluster: KubeCluster,
    restricted_namespace: str,
    runtime_image: str,
    identity: tuple[int, int],
) -> None:
    uid, gid = identity
    container = {
        "name": "runtime",
        "image": runtime_image,
        "command": ["python", "-c", RUNTIME_STEPS],
        "env": [
            {"name": "TRAIN_SPEC", "value": json.dumps(TRAIN_SPEC)},
            {"name": "DRIFT_SPEC", "value": json.dumps(DRIFT_SPEC)},
        ],
    }
    pod = restricted_pod("runtime", container, uid, gid, automountServiceAccountToken=False)
    kube_cluster.core.create_namespaced_pod(restricted_namespace, pod)

    wait_pod_phase(kube_cluster, restricted_namespace, "runtime", {"Succeeded"}, timeout=300)
    logs = pod_logs(kube_cluster, restricted_namespace, "runtime")
    assert "Traceback" not in logs, logs
    # the server flushed its inference log on SIGTERM; 20 rows of 1.0 are far from iris
    assert json.loads(logs.strip().splitlines()[-1]) == {
        "trained": "Succeeded",
        "verified": "Verified",
        "readyz": 200,
        "predictions": 20,
        "drift": "Drift",
        "driftRows": 20,
    }


@pytest.fixture
def operator_account(kube_cluster: KubeCluster, restricted_namespace: str) -> str:
    """A ServiceAccount with every right in the test namespace, and none outside it."""
    name = "mlkube-operator"
    kube_cluster.core.create_namespaced_service_account(
        restricted_namespace, {"metadata": {"name": name}}
    )
    client.RbacAuthorizationV1Api(kube_cluster.api_client).create_namespaced_role_binding(
        restricted_namespace,
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": name, "namespace": restricted_namespace}
            ],
        },
    )
    return name


@pytest.mark.parametrize("identity", IDENTITIES)
def test_operator_image_starts_and_answers_its_liveness_probe_as_any_uid(
    kube_cluster: KubeCluster,
    crds: None,
    restricted_namespace: str,
    operator_account: str,
    operator_image: str,
    identity: tuple[int, int],
) -> None:
    """The image's own command, scoped to the test namespace so that it never reconciles another
    test's objects, and without the chart's POD_ID: kopf's identity comes from USER."""
    uid, gid = identity
    container = {
        "name": "operator",
        "image": operator_image,
        "command": [
            "kopf",
            "run",
            "--standalone",
            f"--namespace={restricted_namespace}",
            "-m",
            "mlkube.controller.main",
            f"--liveness=http://0.0.0.0:{HEALTH_PORT}/healthz",
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": HEALTH_PORT},
            "periodSeconds": 2,
        },
    }
    pod = restricted_pod("operator", container, uid, gid, serviceAccountName=operator_account)
    kube_cluster.core.create_namespaced_pod(restricted_namespace, pod)

    def ready() -> bool:
        status = kube_cluster.core.read_namespaced_pod("operator", restricted_namespace).status
        statuses = status.container_statuses or []
        if statuses and (statuses[0].state.terminated or statuses[0].restart_count):
            pytest.fail(
                f"operator exited:\n{pod_logs(kube_cluster, restricted_namespace, 'operator')}"
            )
        return bool(statuses and statuses[0].ready)

    wait_until(ready, 120, "the operator's /healthz to answer the kubelet")
    logs = pod_logs(kube_cluster, restricted_namespace, "operator")
    assert "Traceback" not in logs, logs
    assert "getpwuid" not in logs, logs
