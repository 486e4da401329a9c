"""Canary on live quality, on the real cluster with the operator in-process: a canary whose labels
show it answers worse than the stable (a one-split decision tree against a logistic regression)
is rolled back by the live check alone, its prediction shift let through on purpose."""

from __future__ import annotations

import random
from typing import Any

import pytest
from kopf.testing import KopfRunner

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
from tests.loop import IRIS, ROWS, post, predict, training

pytestmark = pytest.mark.usefixtures("crds")


def _analysis(kube: KubeCluster, ns: str) -> dict[str, Any]:
    return dict(status_of(kube, ns, "deployments", "iris").get("lastAnalysis") or {})


@pytest.mark.timeout(600)
def test_a_canary_worse_on_its_labels_is_rolled_back_by_the_live_check(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    weak = {"className": "sklearn.tree.DecisionTreeClassifier",
            "hyperparameters": {"max_depth": 1}}  # fmt: skip
    create(kube, ns, training("iris-good"))
    create(kube, ns, training("iris-weak", estimator=weak))
    good, bad = (training_finished(kube, ns, name) for name in ("iris-good", "iris-weak"))
    assert good["phase"] == bad["phase"] == "Succeeded", (good, bad)
    stable, canary = good["modelVersion"], bad["modelVersion"]

    analysis = {
        "intervalSeconds": 5,
        "minRequestCount": 20,
        "inconclusiveLimit": 40,
        "maxPredictionShift": "1",  # loose: only the labels can tell
        "minLabelledRows": 20,
        "maxQualityDrop": "0.1",
    }
    deployment = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": "iris"},
        "spec": {
            "modelVersion": stable, "replicas": 2,
            "strategy": {"canary": {
                "steps": [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}],
                "analysis": analysis, "scaleDownDelaySeconds": 5,
            }},
        },
    }  # fmt: skip
    create(kube, ns, deployment)
    eventually(
        lambda: status_of(kube, ns, "deployments", "iris").get("phase") == "Healthy",
        180,
        f"{stable} to serve",
    )
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "deployments", "iris", {"spec": {"modelVersion": canary}}
    )
    eventually(
        lambda: status_of(kube, ns, "deployments", "iris").get("currentStep") == 1,
        180,
        f"{canary} to take half the pods",
    )

    # requests spread over both pods; which one answered is in each answer's modelVersion
    draw = random.Random(7)
    answered: dict[str, int] = {}
    feedback = []
    for n in range(160):
        row = draw.randrange(len(ROWS))
        status, answer = predict(kube, ns, [ROWS[row]], request_id=f"r{n}")
        assert status == 200, answer
        answered[answer["modelVersion"]] = answered.get(answer["modelVersion"], 0) + 1
        feedback.append({"requestId": answer["requestIds"][0], "label": int(IRIS.target[row])})
    assert min(answered.get(stable, 0), answered.get(canary, 0)) >= 40, answered
    status, stored = post(kube, ns, "feedback", {"feedback": feedback})
    assert (status, stored) == (200, {"stored": 160})
    assert _analysis(kube, ns).get("result") == "Inconclusive", "waiting for labels"

    rolled_back = eventually(
        lambda: (
            (s := status_of(kube, ns, "deployments", "iris")).get("abortedVersion") == canary and s
        ),
        120,
        f"{canary} to be rolled back on its labels",
    )
    last = rolled_back["lastAnalysis"]
    assert last["result"] == "Failed", last
    assert "live Accuracy" in last["message"] and "maxQualityDrop 0.1" in last["message"], last
    assert "prediction shift" not in last["message"] and "error rate" not in last["message"]
    live = last["liveQuality"]
    assert live["metric"] == "Accuracy"
    assert live["canaryLabelledRows"] >= 20 and live["stableLabelledRows"] >= 20, live
    assert float(live["stable"]) - float(live["canary"]) > 0.1, live
    degraded = condition(rolled_back, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "AnalysisFailed")
    assert rolled_back["stableVersion"] == stable
