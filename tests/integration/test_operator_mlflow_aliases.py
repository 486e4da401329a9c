"""MLflow's aliases follow a Deployment on the real cluster (issue 19 item 2): a tracked model
trained twice is registered in the test bed's `mlflow server` (hack/mlflow) as versions 1 and 2;
serving version 1 puts `champion_<namespace>_iris` on 1, its canary puts the challenger on 2, and
the promotion moves the champion to 2, each seen through MLflow's REST API. The alias Job runs in
the Deployment's namespace with its credentials Secret; a server that cannot be reached is a
condition with the reason, a Warning, and no Job made again before its slow retry."""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from mlkube.cli import _act
from mlkube.controller.kube import Cluster
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
from tests.loop import training
from tests.mlflow_fixtures import MlflowServer

pytestmark = pytest.mark.usefixtures("crds")

UNREACHABLE = "http://127.0.0.1:9"
"""Inside the Job's pod: its own loopback, where nothing listens (the discard port)."""


def aliases(server: MlflowServer, model: str) -> dict[str, str]:
    """The registered model's aliases, alias -> version, as MLflow's REST API shows them."""
    status, found = server.rest("GET", f"/api/2.0/mlflow/registered-models/get?name={model}")
    assert status == 200, found
    return {a["alias"]: a["version"] for a in found["registered_model"].get("aliases", [])}


def deployment(name: str, version: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"modelVersion": version, "replicas": 1, **spec},
    }  # fmt: skip


@pytest.mark.timeout(900)
def test_mlflow_aliases_follow_the_deployment_and_champion_moves_at_the_promotion(
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
    registered = f"iris-{uuid.uuid4().hex[:8]}"
    tracking = {"mlflow": {
        "trackingUri": mlflow_server.uri, "experiment": registered, "registeredModel": registered,
        "credentialsSecret": "mlflow-team",
    }}  # fmt: skip
    for name, number in (("iris-a", "1"), ("iris-b", "2")):
        create(kube, ns, training(name, tracking=tracking))
        done = training_finished(kube, ns, name)
        assert done["phase"] == "Succeeded", done
        assert done["tracking"]["registeredVersion"] == number
        assert done["tracking"]["credentialsSecret"] == "mlflow-team"
    champion, challenger = f"champion_{ns}_iris", f"challenger_{ns}_iris"

    steps = [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
    create(kube, ns, deployment("iris", "iris-v1", strategy={"canary": {"steps": steps}}))
    eventually(
        lambda: aliases(mlflow_server, registered) == {champion: "1"},
        240,
        f"MLflow to show {champion} on version 1",
    )
    job = kube.batch.read_namespaced_job("iris-mlflow-aliases", ns)
    pod = job.spec.template.spec
    assert pod.automount_service_account_token is False
    refs = {e.value_from.secret_key_ref.name for e in pod.containers[0].env if e.value_from}
    assert refs == {"mlflow-team"}, "the namespace's own Secret, read by the kubelet"

    # -- a canary: challenger on version 2 -------------------------------------------------
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "deployments", "iris", {"spec": {"modelVersion": "iris-v2"}}
    )
    eventually(
        lambda: status_of(kube, ns, "deployments", "iris").get("phase") == "Paused",
        240,
        "iris-v2's canary to reach the pause",
    )
    eventually(
        lambda: aliases(mlflow_server, registered) == {champion: "1", challenger: "2"},
        120,
        f"MLflow to show {challenger} on version 2 during the canary",
    )

    # -- the promotion moves the champion ------------------------------------------------------
    args = argparse.Namespace(namespace=ns, name="iris")
    assert _act(Cluster(kube.kubeconfig), args, "promote-full") == 0
    eventually(
        lambda: aliases(mlflow_server, registered) == {champion: "2"},
        180,
        f"MLflow to show {champion} on version 2 and no {challenger}",
    )
    synced = eventually(
        lambda: (
            (s := status_of(kube, ns, "deployments", "iris")).get("mlflowAliases")
            == [{
                "trackingUri": mlflow_server.uri, "registeredModel": registered,
                "alias": champion, "version": "2", "credentialsSecret": "mlflow-team",
            }]
            and condition(s, "AliasesSynced").get("status") == "True"
            and s
        ),
        60,
        "the Deployment's status to record the champion on version 2",
    )  # fmt: skip
    assert condition(synced, "AliasesSynced")["message"] == (
        f"models:/{registered}@{champion} is 2"
    )

    # -- a tracking server that cannot be reached ----------------------------------------------
    v1 = get(kube, ns, "modelversions", "iris-v1")
    assert v1 is not None
    spec = {**v1["spec"], "version": 9}
    spec["lineage"]["mlflow"] = {**spec["lineage"]["mlflow"], "trackingUri": UNREACHABLE}
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion",
        "metadata": {"name": "iris-v9"}, "spec": spec,
    })  # fmt: skip
    create(kube, ns, deployment("lost", "iris-v9"))
    failed = eventually(
        lambda: (
            (c := condition(status_of(kube, ns, "deployments", "lost"), "AliasesSynced"))
            and c.get("status") == "False"
            and c
        ),
        240,
        "AliasesSynced False on the unreachable server",
    )
    assert failed["reason"] == "TrackingUnavailable"
    assert f"at {UNREACHABLE}: cannot connect" in failed["message"], failed["message"]
    events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=lost").items
    assert ("Warning", "TrackingUnavailable") in [(e.type, e.reason) for e in events]
    first = kube.batch.read_namespaced_job("lost-mlflow-aliases", ns).metadata.uid
    time.sleep(20)
    again = kube.batch.read_namespaced_job("lost-mlflow-aliases", ns).metadata.uid
    assert again == first, "the failed Job waits for its TTL: no hot retry"
    assert aliases(mlflow_server, registered) == {champion: "2"}
