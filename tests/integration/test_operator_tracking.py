"""spec.tracking.mlflow on the real cluster: trainer pods log to the test bed's `mlflow server`
(hack/mlflow) with the team's credentials Secret; the run lands in the TrainingJob's status and the
ModelVersion's lineage, and MLflow's REST API shows it; an unreachable server warns or fails."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import condition, create, eventually, get, training_finished
from tests.loop import training
from tests.mlflow_fixtures import MlflowServer

pytestmark = pytest.mark.usefixtures("crds")

UNREACHABLE = "http://127.0.0.1:9"
"""Inside the trainer pod: its own loopback, where nothing listens (the discard port)."""


def events_for(kube: KubeCluster, ns: str, name: str) -> list[tuple[str, str]]:
    items = kube.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [(e.type, e.reason) for e in items]


@pytest.mark.timeout(600)
def test_a_tracked_training_names_its_mlflow_run_in_status_and_lineage(
    kube_cluster: KubeCluster,
    operator_namespace: str,
    operator: dict[str, KopfRunner],
    mlflow_server: MlflowServer,
) -> None:
    kube, ns = kube_cluster, operator_namespace
    team = mlflow_server.team(ns)
    kube.core.create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="mlflow-team"),
            string_data={"username": team.username, "password": team.password},
        ),
    )
    experiment, registered = f"{ns}-iris", f"iris-{uuid.uuid4().hex[:8]}"

    def tracked(name: str, **mlflow: Any) -> dict[str, Any]:
        return training(name, model=name, tracking={"mlflow": mlflow})

    create(kube, ns, tracked(
        "iris-tracked", trackingUri=mlflow_server.uri, experiment=experiment,
        registeredModel=registered, credentialsSecret="mlflow-team",
    ))  # fmt: skip
    create(kube, ns, tracked(
        "iris-warned", trackingUri=UNREACHABLE, experiment=experiment, required=False
    ))  # fmt: skip
    create(kube, ns, tracked("iris-refused", trackingUri=UNREACHABLE, experiment=experiment))

    done = training_finished(kube, ns, "iris-tracked")
    assert done["phase"] == "Succeeded", done
    run = done["tracking"]
    assert condition(done, "Tracked")["status"] == "True"
    assert (
        run["runUrl"]
        == f"{mlflow_server.uri}/#/experiments/{run['experimentId']}/runs/{run['runId']}"
    )
    assert (run["registeredModel"], run["registeredVersion"]) == (registered, "1")
    version = get(kube, ns, "modelversions", "iris-tracked-v1")
    assert version is not None
    assert version["spec"]["lineage"]["mlflow"] == run, "the same run in lineage"

    logged = mlflow_server.run(run["runId"])
    assert logged["info"]["status"] == "FINISHED"
    assert logged["info"]["run_name"] == "iris-tracked"
    tags = {t["key"]: t["value"] for t in logged["data"]["tags"]}
    assert (tags["mlkube.namespace"], tags["mlkube.trainingJob"]) == (ns, "iris-tracked")
    assert tags["mlkube.image"] == version["spec"]["lineage"]["image"]
    assert tags["mlkube.dataset.digest"] == version["spec"]["lineage"]["datasetDigest"]
    metrics = {m["key"]: m["value"] for m in logged["data"]["metrics"]}
    assert {k: f"{v:.6g}" for k, v in metrics.items()} == done["metrics"]
    status, found = mlflow_server.rest(
        "GET", f"/api/2.0/mlflow/model-versions/get?name={registered}&version=1"
    )
    assert status == 200, found
    assert found["model_version"]["run_id"] == run["runId"]
    version_tags = {t["key"]: t["value"] for t in found["model_version"]["tags"]}
    assert version_tags["mlkube.modelVersion"] == "iris-tracked-v1"

    warned = training_finished(kube, ns, "iris-warned")
    assert warned["phase"] == "Succeeded", "not required: trained and registered all the same"
    assert get(kube, ns, "modelversions", "iris-warned-v1") is not None
    untracked = condition(warned, "Tracked")
    assert (untracked["status"], untracked["reason"]) == ("False", "TrackingUnavailable")
    assert UNREACHABLE in untracked["message"]
    assert "tracking" not in warned
    eventually(
        lambda: ("Warning", "TrackingUnavailable") in events_for(kube, ns, "iris-warned"),
        30,
        "a Warning naming the unavailable tracking server",
    )

    refused = training_finished(kube, ns, "iris-refused")
    assert refused["phase"] == "Failed"
    failed = condition(refused, "Failed")
    assert failed["reason"] == "TrackingUnavailable"
    assert failed["message"].startswith(
        f"tracking.mlflow: cannot start a run in experiment '{experiment}' at {UNREACHABLE}"
    )
    assert get(kube, ns, "modelversions", "iris-refused-v1") is None
