"""Ground truth closes the loop, on the real cluster with the operator in-process: predictions
with request ids, their true labels posted to /feedback (30% flipped on purpose) with a business
outcome, live accuracy falling past its threshold beside the estimate from probabilities, and a
retrain on the labelled production data that canaries and is promoted."""

from __future__ import annotations

import random
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

pytestmark = pytest.mark.usefixtures("crds")

FLIPPED_SHARE = 0.3


@pytest.mark.timeout(1500)
def test_wrong_labels_degrade_live_quality_and_a_retrain_on_production_data_is_promoted(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace

    # 1. v1 serves
    train(kube, ns, "iris-1")
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": "iris"},
        "spec": {
            "model": "iris", "latestApproved": True, "replicas": 1,
            "strategy": {"canary": {
                "steps": [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}],
                "analysis": {"intervalSeconds": 5, "minRequestCount": 30, "maxPredictionShift": "0.3"},
                "scaleDownDelaySeconds": 5,
            }},
        },
    })  # fmt: skip
    eventually(
        lambda: status_of(kube, ns, "deployments", "iris").get("stableVersion") == "iris-v1",
        240,
        "Deployment iris to serve v1",
    )
    eventually(lambda: predict(kube, ns, ROWS[:1])[0] == 200, 90, "the Service to answer")

    # 2. requests with ids; every row's id comes back
    ids: list[str] = []
    for start in range(0, 150, 10):
        status, answer = predict(kube, ns, ROWS[start : start + 10], request_id=f"order-{start}")
        assert status == 200, answer
        assert answer["requestIds"] == [f"order-{start}-{row}" for row in range(10)]
        ids += answer["requestIds"]

    # 3. the truth, 30% flipped, with a business outcome per row; a label for no prediction
    draw = random.Random(15)
    flipped = set(draw.sample(range(150), int(150 * FLIPPED_SHARE)))
    truth = IRIS.target.tolist()
    feedback = [
        {
            "requestId": ids[i],
            "label": (truth[i] + 1) % 3 if i in flipped else truth[i],
            "outcomes": {"revenue": 2.5},
        }
        for i in range(150)
    ]
    for start in range(0, 150, 50):
        status, stored = post(kube, ns, "feedback", {"feedback": feedback[start : start + 50]})
        assert status == 200, stored
    assert (
        post(kube, ns, "feedback", {"feedback": [{"requestId": "never-seen", "label": 1}]})[0]
        == 200
    )
    refused, why = post(kube, ns, "feedback", {"feedback": [{"requestId": ids[0], "label": 7}]})
    assert refused == 422
    assert ids[0] in why["error"]
    time.sleep(12)  # both logs flush every 10 s

    # 4. live accuracy drops past maxDrop, beside the estimate; outcomes summed; a retrain
    retrain = training(
        "x",
        dataset={
            "uri": "builtin:iris",
            "inferenceLog": {"deployment": "iris", "appendOriginal": True},
        },
    )["spec"]
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftMonitor", "metadata": {"name": "iris"},
        "spec": {
            "deployment": "iris", "schedule": "0 0 1 1 *", "window": {"rows": 150}, "minRows": 100,
            "performance": {
                "metric": "Accuracy", "maxDrop": "0.1", "minLabelledRows": 100,
                "outcomes": [{"name": "revenue", "aggregate": "Sum"}],
            },
            "action": {"type": "Retrain", "retrain": {"cooldownSeconds": 3600, "template": retrain}},
        },
    })  # fmt: skip
    eventually(
        lambda: status_of(kube, ns, "driftmonitors", "iris").get("cronJobName"),
        60,
        "the drift CronJob",
    )
    run_drift_check(kube, ns, 1)
    status = wait_runs(kube, ns, 1)
    performance = status["performance"]
    assert performance["verdict"] == "Degraded", performance
    assert performance["modelVersion"] == "iris-v1"
    assert performance["labelledRows"] == 150
    assert performance["unknownIds"] == 1
    assert float(performance["value"]) < float(performance["offline"]) - 0.1
    assert float(performance["value"]) == pytest.approx(1 - FLIPPED_SHARE, abs=0.08)
    assert float(performance["estimated"]) > float(performance["value"]) + 0.1, (
        "the estimate from probabilities cannot see wrong labels (concept drift)"
    )
    assert float(performance["outcomes"]["revenue"]) == pytest.approx(150 * 2.5)
    degraded = condition(status, "PerformanceDegraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "BelowThreshold")
    assert status["retrainCount"] == 1
    assert status["lastRun"]["performance"] == "Degraded"

    # 5. the retrain trains on the labelled production data; its version canaries and is promoted
    with Traffic(kube, ns) as traffic:
        retrained = training_finished(kube, ns, "iris-retrain-1")
        assert retrained["phase"] == "Succeeded", retrained
        assert retrained["modelVersion"] == "iris-v2"
        lineage = get(kube, ns, "modelversions", "iris-v2")["spec"]["lineage"]  # type: ignore[index]
        assert lineage["inferenceLog"]["deployment"] == "iris"
        assert lineage["inferenceLog"]["modelVersions"] == ["iris-v1"]
        assert lineage["inferenceLog"]["rows"] == 150
        promoted = eventually(
            lambda: (
                (s := status_of(kube, ns, "deployments", "iris")).get("stableVersion") == "iris-v2"
                and s
            ),
            300,
            "the retrained v2 to be promoted",
        )
    assert promoted["lastAnalysis"]["result"] == "Passed"
    assert set(traffic.statuses) == {200}, f"every request answered: {traffic.statuses}"
