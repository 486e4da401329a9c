"""The operator in-process (kopf's KopfRunner) against the real cluster, workloads as real pods from
the locally built runtime image: train -> register -> serve -> canary -> rollback -> drift -> retrain.

One long scenario, in order, because each act needs the one before it; every wait names what it
waits for, so a failure says where the loop broke.
"""

from __future__ import annotations

import os
import time

import pytest
from kopf.testing import KopfRunner

from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import (
    GROUP,
    VERSION,
    condition,
    create,
    eventually,
    get,
    start_operator,
    status_of,
)
from tests.loop import (
    IRIS,
    ROWS,
    Traffic,
    predict,
    run_drift_check,
    server_deployments,
    train,
    training,
    wait_runs,
)

pytestmark = pytest.mark.usefixtures("crds")


@pytest.mark.timeout(1800)
def test_the_whole_loop(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace

    # 1. TrainingJob -> Job -> pod trains -> ModelVersion v1 -> Deployment serves it
    v1 = train(kube, ns, "iris-1", qualityGates={"minAccuracy": "0.8"})
    assert v1["modelVersion"] == "iris-v1"
    assert condition(v1, "Succeeded")["status"] == "True"
    assert float(v1["metrics"]["accuracy"]) >= 0.8
    mv1 = get(kube, ns, "modelversions", "iris-v1")
    assert mv1 is not None
    assert mv1["spec"]["lineage"]["trainingJob"] == "iris-1"
    assert len(mv1["spec"]["artifact"]["sha256"]) == 64
    eventually(lambda: condition(status_of(kube, ns, "modelversions", "iris-v1"), "Ready").get("status") == "True",
               120, "ModelVersion iris-v1 to be verified")  # fmt: skip

    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": "iris"},
        "spec": {
            "model": "iris", "latestApproved": True, "replicas": 1,
            "strategy": {"canary": {
                "steps": [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}],
                "analysis": {"intervalSeconds": 5, "minRequestCount": 40, "maxPredictionShift": "0.3"},
                "scaleDownDelaySeconds": 20,
            }},
        },
    })  # fmt: skip
    eventually(lambda: condition(status_of(kube, ns, "deployments", "iris"), "Ready").get("status") == "True",
               180, "Deployment iris to serve v1")  # fmt: skip
    eventually(lambda: predict(kube, ns, ROWS[:1])[0] == 200, 60, "the Service to answer")
    status, answer = predict(kube, ns, ROWS[:50])
    assert status == 200
    assert answer["modelVersion"] == "iris-v1"
    accuracy = (
        sum(int(p) == t for p, t in zip(answer["predictions"], IRIS.target[:50], strict=True)) / 50
    )
    assert accuracy > 0.9

    # 2. v2 canaries step by step, passes analysis, becomes stable; v1 is scaled down after the delay
    with Traffic(kube, ns) as traffic:
        train(
            kube, ns, "iris-2", estimator={"className": "sklearn.ensemble.RandomForestClassifier"}
        )
        seen_steps = set()

        def promoted() -> bool:
            s = status_of(kube, ns, "deployments", "iris")
            if s.get("canaryVersion") == "iris-v2":
                seen_steps.add(s.get("currentStep"))
            return s.get("stableVersion") == "iris-v2"

        # 5. the operator stops in the middle of a canary step and starts again: the rollout
        #    resumes from status and nothing is created twice
        eventually(lambda: promoted() or seen_steps, 300, "v2's canary to start", interval=1)
        operator["runner"].__exit__(None, None, None)
        operator["runner"] = start_operator(ns, os.environ["MLKUBE_RUNTIME_IMAGE"], kube.kubeconfig)
        eventually(promoted, 300, "v2 to be promoted", interval=1)
        assert seen_steps, "the canary was visible in status"
        after = status_of(kube, ns, "deployments", "iris")
        assert after["previousStableVersion"] == "iris-v1"
        assert after["lastAnalysis"]["result"] == "Passed"
        eventually(
            lambda: "iris-v1" not in server_deployments(kube, ns),
            90,
            "v1 to be scaled down after the delay",
        )
    assert traffic.statuses[200] > 0
    assert set(traffic.statuses) == {200}, f"stable served every request: {traffic.statuses}"
    assert sorted(server_deployments(kube, ns)) == ["iris-v2"]
    versions = kube.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "modelversions")[
        "items"
    ]
    assert sorted(v["metadata"]["name"] for v in versions) == ["iris-v1", "iris-v2"]
    jobs = kube.batch.list_namespaced_job(
        ns, label_selector="app.kubernetes.io/name=mlkube-trainer"
    ).items
    assert sorted(j.metadata.name for j in jobs) == ["iris-1-train", "iris-2-train"]

    # 3. a bad v3 (its predictions diverge from stable's) is rolled back; stable answers throughout
    with Traffic(kube, ns) as traffic:
        train(
            kube, ns, "iris-3",
            estimator={"className": "sklearn.tree.DecisionTreeClassifier", "hyperparameters": {"max_depth": 1}},
        )  # fmt: skip
        degraded = eventually(
            lambda: (
                (s := status_of(kube, ns, "deployments", "iris")).get("abortedVersion") == "iris-v3"
                and s
            ),
            300,
            "v3 to be rolled back",
        )
    assert degraded["stableVersion"] == "iris-v2"
    assert degraded["phase"] == "Degraded"
    reason = condition(degraded, "Degraded")
    assert reason["reason"] == "AnalysisFailed"
    assert "prediction shift" in reason["message"]
    assert set(traffic.statuses) == {200}, f"stable served every request: {traffic.statuses}"
    assert get(kube, ns, "deployments", "iris")["spec"]["latestApproved"] is True, "spec untouched"  # type: ignore[index]

    # 4. drift: unchanged inputs -> no drift; shifted inputs -> drift on the right columns, one retrain
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftMonitor", "metadata": {"name": "iris"},
        "spec": {
            "deployment": "iris", "schedule": "0 0 1 1 *", "window": {"rows": 150}, "minRows": 100,
            "action": {"type": "Retrain", "retrain": {"cooldownSeconds": 3600, "template": training("x")["spec"]}},
        },
    })  # fmt: skip
    eventually(
        lambda: status_of(kube, ns, "driftmonitors", "iris").get("cronJobName"),
        60,
        "the drift CronJob",
    )
    for start in range(0, 150, 10):
        assert predict(kube, ns, ROWS[start : start + 10])[0] == 200
    time.sleep(12)  # the server flushes its inference log every 10 s
    run_drift_check(kube, ns, 1)
    quiet = wait_runs(kube, ns, 1)
    assert quiet["lastRun"]["verdict"] == "NoDrift", quiet["lastRun"]

    shifted = [
        {
            **row,
            "petal_length_cm": row["petal_length_cm"] + 3,
            "petal_width_cm": row["petal_width_cm"] + 1.5,
        }
        for row in ROWS
    ]
    for start in range(0, 150, 10):
        assert predict(kube, ns, shifted[start : start + 10])[0] == 200
    time.sleep(12)
    run_drift_check(kube, ns, 2)
    drifted = wait_runs(kube, ns, 2)
    assert drifted["lastRun"]["verdict"] == "Drift", drifted["lastRun"]
    assert set(drifted["lastRun"]["driftedColumns"]) == {"petal_length_cm", "petal_width_cm"}
    assert drifted["retrainCount"] == 1

    run_drift_check(kube, ns, 3)
    cooled = wait_runs(kube, ns, 3)
    assert cooled["lastRun"]["verdict"] == "Drift"
    assert cooled["retrainCount"] == 1, "a second detection inside the cooldown retrains nothing"
    retrains = kube.custom.list_namespaced_custom_object(
        GROUP, VERSION, ns, "trainingjobs", label_selector="mlkube.io/driftmonitor=iris"
    )["items"]
    assert [t["metadata"]["name"] for t in retrains] == ["iris-retrain-1"]

    # deleting a TrainingJob takes its Job and pods with it, never its ModelVersion
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", "iris-1")
    eventually(
        lambda: (
            not kube.batch.list_namespaced_job(
                ns, label_selector="mlkube.io/trainingjob=iris-1"
            ).items
        ),
        120,
        "iris-1's Job to be garbage-collected",
    )
    assert get(kube, ns, "modelversions", "iris-v1") is not None
