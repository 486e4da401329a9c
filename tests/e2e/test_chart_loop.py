"""The operator as users run it: installed by the Helm chart, every workload a real pod, the whole
loop once per artifact-storage mode (a PVC per namespace, then S3 object storage):

helm install (CRDs from the chart) -> operator Ready -> train -> `mlkube approve` -> serve ->
a second version canaries to stable while `helm upgrade` swaps the operator's image tag ->
shifted inputs with their true labels posted to /feedback -> drift and degraded live quality ->
retrain -> `helm uninstall` keeps the CRDs and every user object.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.batch_store import STORE, read_output, wait_phase, write_inputs
from tests.cluster.fixtures import KubeCluster, project_version, wait_until
from tests.e2e.conftest import Helm, retag
from tests.integration.fixtures import (
    GROUP,
    VERSION,
    condition,
    create,
    eventually,
    status_of,
    training_finished,
)
from tests.loop import (
    IRIS,
    ROWS,
    Traffic,
    post,
    predict,
    run_drift_check,
    train,
    training,
    wait_runs,
)
from tests.s3_fixtures import S3Server

RELEASE, SYSTEM = "mlkube", "mlkube-system"
CHART = "charts/mlkube"
KINDS = ("trainingjobs", "modelversions", "deployments", "driftmonitors", "batchpredictions")


def operator_ready(kube: KubeCluster) -> str | None:
    """The image of the operator pod once it is Ready (one replica, Recreate)."""
    pods = kube.core.list_namespaced_pod(
        SYSTEM, label_selector="app.kubernetes.io/name=mlkube-operator"
    ).items
    for pod in pods:
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        if ready and pod.metadata.deletion_timestamp is None:
            return str(pod.spec.containers[0].image)
    return None


@pytest.fixture
def workload_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace for the user's objects; deleted at the end (after the chart is gone,
    so nothing is left with a finalizer no operator would remove)."""
    name = f"mlkube-e2e-{uuid.uuid4().hex[:6]}"
    kube_cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_until(
        lambda: kube_cluster.core.read_namespaced_service_account("default", name),
        60,
        f"serviceaccount default in {name}",
    )
    yield name
    kube_cluster.core.delete_namespace(name, propagation_policy="Background")


def storage_values(mode: str, s3: S3Server | None) -> list[str]:
    if mode == "pvc":
        return []
    assert s3 is not None
    return [
        "--set", f"artifacts.root=s3://{s3.bucket}/e2e",
        "--set", "artifacts.s3Secret=mlkube-s3",
        "--set", f"artifacts.s3EndpointURL={s3.env['AWS_ENDPOINT_URL']}",
    ]  # fmt: skip


def namespace_secret(kube: KubeCluster, namespace: str, s3: S3Server) -> None:
    """The namespace's own key, scoped by the S3 server to ``<bucket>/e2e/<namespace>/``, as a
    platform team would hand it out."""
    key = s3.identity(namespace, f"e2e/{namespace}")
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    kube.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="mlkube-s3"),
            string_data={k: key[k] for k in names if k in key},
        ),
    )


def approve(kube: KubeCluster, namespace: str, name: str) -> None:
    cli = [sys.executable, "-m", "mlkube.cli", "--kubeconfig", kube.kubeconfig, "-n", namespace]
    done = subprocess.run([*cli, "approve", name], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def objects(kube: KubeCluster, namespace: str) -> dict[str, list[str]]:
    return {
        plural: sorted(
            o["metadata"]["name"]
            for o in kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)[
                "items"
            ]
        )
        for plural in KINDS
    }


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("mode", ["pvc", "s3"])
def test_the_chart_runs_the_whole_loop(
    mode: str,
    request: pytest.FixtureRequest,
    kube_cluster: KubeCluster,
    helm: Helm,
    operator_image: str,
    runtime_image: str,
    workload_namespace: str,
    timings: Callable[[str], Any],
) -> None:
    kube, ns, version = kube_cluster, workload_namespace, project_version()
    s3 = request.getfixturevalue("s3_server") if mode == "s3" else None
    if s3 is not None:
        namespace_secret(kube, ns, s3)

    # 1. helm install, CRDs from the chart -> operator Ready
    with timings(f"[{mode}] helm install -> operator Ready"):
        helm(
            "upgrade", "--install", RELEASE, CHART, "--namespace", SYSTEM, "--create-namespace",
            "--take-ownership", "--set", "crds.enabled=true",
            # only this tier's namespaces: the integration tier runs its own operators meanwhile
            "--set", "watchNamespaces={mlkube-e2e-*}",
            "--set", f"image.tag={version}", "--set", f"runtimeImage.tag={version}",
            *storage_values(mode, s3), "--wait", "--timeout", "5m",
        )  # fmt: skip
        wait_until(lambda: operator_ready(kube), 120, "the operator pod to be Ready")
    crd = kube._api("ApiextensionsV1Api").read_custom_resource_definition("trainingjobs.mlkube.io")
    assert crd.metadata.annotations["meta.helm.sh/release-name"] == RELEASE, "the chart's CRDs"

    try:
        # 2. a TrainingJob trains; a person approves its version; a Deployment serves it
        with timings(f"[{mode}] train v1, mlkube approve, serve"):
            v1 = train(kube, ns, "iris-1", approvalPolicy="Manual")
            assert v1["modelVersion"] == "iris-v1"
            eventually(
                lambda: (
                    condition(status_of(kube, ns, "modelversions", "iris-v1"), "Ready").get(
                        "status"
                    )
                    == "True"
                ),
                180,
                "ModelVersion iris-v1 to be verified",
            )
            create(kube, ns, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": "iris"},
                "spec": {
                    "model": "iris", "latestApproved": True, "replicas": 1,
                    "strategy": {"canary": {
                        "steps": [{"setWeight": 50}, {"pause": {"seconds": 45}}, {"analysis": {}}, {"setWeight": 100}],
                        "analysis": {"intervalSeconds": 5, "minRequestCount": 20, "maxPredictionShift": "0.3"},
                        "scaleDownDelaySeconds": 10,
                    }},
                },
            })  # fmt: skip
            waiting = eventually(
                lambda: (
                    (c := condition(status_of(kube, ns, "deployments", "iris"), "Ready")).get(
                        "reason"
                    )
                    == "NoApprovedVersion"
                    and c
                ),
                120,
                "the Deployment to wait for an approved version",
            )
            assert waiting["status"] == "False"
            approve(kube, ns, "iris-v1")
            eventually(
                lambda: status_of(kube, ns, "deployments", "iris").get("phase") == "Healthy",
                240,
                "Deployment iris to serve v1",
            )
            eventually(lambda: predict(kube, ns, ROWS[:1])[0] == 200, 90, "the Service to answer")
            status, answer = predict(kube, ns, ROWS[:50])
            assert (status, answer["modelVersion"]) == (200, "iris-v1")
            # on by default: the servers are fenced in, and predict and the canary's scrapes
            # (both through the API server's proxies) pass the fence
            fence = kube._api("NetworkingV1Api").read_namespaced_network_policy("iris", ns)
            assert fence.spec.pod_selector.match_labels["mlkube.io/deployment"] == "iris"
            assert answer["predictions"][:3] == [0, 0, 0]

        # 2b. a BatchPrediction scores files in the namespace's store with the approved version
        with timings(f"[{mode}] BatchPrediction of 4 shards"):
            score_in_batch(kube, ns, runtime_image, s3)

        # 3. v2 canaries; the operator is upgraded to a new image tag mid-rollout; v2 becomes stable
        upgraded = retag(kube, operator_image, f"localhost/mlkube-operator:{version}-e2e-{mode}")
        with (
            timings(f"[{mode}] v2 canary with helm upgrade mid-rollout"),
            Traffic(kube, ns) as traffic,
        ):
            train(
                kube,
                ns,
                "iris-2",
                estimator={"className": "sklearn.ensemble.RandomForestClassifier"},
            )
            eventually(
                lambda: (
                    status_of(kube, ns, "deployments", "iris").get("canaryVersion") == "iris-v2"
                ),
                180,
                "v2's canary to start",
            )
            helm(
                "upgrade", RELEASE, CHART, "--namespace", SYSTEM, "--reuse-values",
                "--set", f"image.tag={upgraded.rsplit(':', 1)[1]}", "--wait", "--timeout", "5m",
            )  # fmt: skip
            wait_until(
                lambda: operator_ready(kube) == upgraded, 180, "the upgraded operator to be Ready"
            )
            mid = status_of(kube, ns, "deployments", "iris")
            assert mid.get("canaryVersion") == "iris-v2", (
                f"still mid-canary after the upgrade: {mid}"
            )
            promoted = eventually(
                lambda: (
                    (s := status_of(kube, ns, "deployments", "iris")).get("stableVersion")
                    == "iris-v2"
                    and s
                ),
                300,
                "v2 to be promoted by the upgraded operator",
            )
        assert promoted["lastAnalysis"]["result"] == "Passed"
        assert traffic.statuses[200] > 0
        assert set(traffic.statuses) == {200}, f"every request answered: {traffic.statuses}"

        # 4. shifted inputs -> drift on the shifted columns -> a retrain TrainingJob that trains
        with timings(f"[{mode}] drift -> retrain"):
            retrain = training("x", approvalPolicy="Manual")["spec"]
            create(kube, ns, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftMonitor", "metadata": {"name": "iris"},
                "spec": {
                    "deployment": "iris", "schedule": "0 0 1 1 *", "window": {"rows": 150}, "minRows": 100,
                    "performance": {"maxDrop": "0.1", "minLabelledRows": 100,
                                    "outcomes": [{"name": "revenue"}]},
                    "action": {"type": "Retrain", "retrain": {"cooldownSeconds": 3600, "template": retrain}},
                },
            })  # fmt: skip
            eventually(
                lambda: status_of(kube, ns, "driftmonitors", "iris").get("cronJobName"),
                90,
                "the drift CronJob",
            )
            shifted = [
                {**row, "petal_length_cm": row["petal_length_cm"] + 3,
                 "petal_width_cm": row["petal_width_cm"] + 1.5}
                for row in ROWS
            ]  # fmt: skip
            truth = IRIS.target.tolist()
            for start in range(0, 150, 10):
                status, answer = predict(kube, ns, shifted[start : start + 10], f"e2e-{start}")
                assert status == 200, answer
                labels = [
                    {"requestId": rid, "label": truth[start + row], "outcomes": {"revenue": 1}}
                    for row, rid in enumerate(answer["requestIds"])
                ]
                assert post(kube, ns, "feedback", {"feedback": labels})[0] == 200
            time.sleep(12)  # the server flushes its inference log and labels every 10 s
            run_drift_check(kube, ns, 1)
            monitored = wait_runs(kube, ns, 1)
            run = monitored["lastRun"]
            assert run["verdict"] == "Drift", run
            # the shifted inputs lie outside the training data: the labels show the damage
            quality = monitored["performance"]
            assert (quality["verdict"], quality["labelledRows"]) == ("Degraded", 150), quality
            assert quality["outcomes"] == {"revenue": "150"}
            assert condition(monitored, "PerformanceDegraded")["status"] == "True"
            drifted = eventually(
                lambda: (
                    (s := status_of(kube, ns, "driftmonitors", "iris")).get("retrainCount") == 1
                    and s
                ),
                60,
                "the retrain",
            )
            assert set(drifted["lastRun"]["driftedColumns"]) >= {"petal_length_cm"}
            retrained = training_finished(kube, ns, "iris-retrain-1")
            assert retrained["phase"] == "Succeeded", retrained
            assert retrained["modelVersion"] == "iris-v3"

        if mode == "s3":
            assert s3 is not None
            check_object_storage(kube, ns, s3)

        # 5. helm uninstall: the CRDs and every user object stay; the model keeps serving
        before = objects(kube, ns)
        with timings(f"[{mode}] helm uninstall"):
            helm("uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout", "3m")
        assert kube._api("ApiextensionsV1Api").read_custom_resource_definition(
            "trainingjobs.mlkube.io"
        )
        assert objects(kube, ns) == before
        assert before["deployments"] == ["iris"]
        assert before["modelversions"] == ["iris-v1", "iris-v2", "iris-v3"]
        assert predict(kube, ns, ROWS[:5])[0] == 200, "the served model outlives the operator"
    finally:
        if operator_ready(kube) is not None:  # a failure above: leave no release behind
            helm("uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout", "3m")


def score_in_batch(kube: KubeCluster, namespace: str, image: str, s3: S3Server | None) -> None:
    """150 rows in a.parquet, b.csv and c.parquet under the namespace's store, scored by
    iris-v1 as four shards, two at a time, by the chart's operator; `mlkube status` shows it."""
    root = f"s3://{s3.bucket}/e2e/{namespace}" if s3 else f"{STORE}/{namespace}"
    source, output = f"{root}/scoring/", f"{root}/scores/"
    assert write_inputs(kube, namespace, image, source, s3=s3) == 150
    create(kube, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "BatchPrediction", "metadata": {"name": "scores"},
        "spec": {
            "modelVersion": "iris-v1", "input": {"uri": source},
            "output": {"uri": output, "idColumn": "id"}, "rowsPerShard": 40, "parallelism": 2,
        },
    })  # fmt: skip
    status = wait_phase(kube, namespace, "scores")
    assert status["phase"] == "Succeeded", status
    assert status["shards"] == {"total": 4, "succeeded": 4, "failed": 0}
    assert (status["rowsScored"], status["manifestUri"]) == (150, f"{output}_manifest.json")
    out = read_output(kube, namespace, image, output, s3)
    assert out["parts"] == [f"part-{i:05d}.parquet" for i in range(4)]
    assert (out["rows"], out["uniqueIds"], out["manifest"]["rowsOut"]) == (150, 150, 150)
    cli = [sys.executable, "-m", "mlkube.cli", "--kubeconfig", kube.kubeconfig, "-n", namespace]
    shown = subprocess.run([*cli, "status", "scores"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "[##############################] 4/4 shards, 150/150 rows   Succeeded (iris-v1)" in (
        shown.stdout
    ), "no Deployment is named scores: the BatchPrediction is shown"


def check_object_storage(kube: KubeCluster, namespace: str, s3: S3Server) -> None:
    """Every version, reference sample and inference-log segment went to the namespace's prefix;
    a spec naming another namespace's prefix is refused."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=s3.env["AWS_ACCESS_KEY_ID"],
        secret=s3.env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=s3.env["AWS_ENDPOINT_URL"],
    )
    root = f"{s3.bucket}/e2e/{namespace}"
    for number in (1, 2, 3):
        stored = {p.rsplit("/", 1)[1] for p in fs.ls(f"{root}/iris/{number}")}
        assert {"model.joblib", "model.sha256", "schema.json", "reference.parquet"} <= stored
    assert fs.ls(f"{root}/_inference/iris"), "the servers' inference log is in the bucket"

    other = f"s3://{s3.bucket}/e2e/team-b/churn.csv"
    create(kube, namespace, training("borrow", dataset={"uri": other}))
    refused = condition(training_finished(kube, namespace, "borrow"), "Failed")
    assert refused["reason"] == "ForbiddenURI"
    assert refused["message"].startswith(f"spec.dataset.uri: {other} is outside")
