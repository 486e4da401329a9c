"""spec.search on the real cluster: a Grid of 6 trials runs as one Indexed Job with 3 pods at
once, a trial the estimator refuses is recorded while the others finish, the best trial is
trained and gated, the same spec gives the same winner, each trial is an MLflow child run of the
training's run, and the trials live under the namespace's own store path."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client, watch
from urllib3.exceptions import ProtocolError

from tests.batch_store import STORE
from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import condition, create, get, rejection, training_finished
from tests.loop import training
from tests.mlflow_fixtures import MlflowServer

pytestmark = pytest.mark.usefixtures("crds")

GRID = {
    "method": "Grid",
    # C=-1 is refused by LogisticRegression when fitting: one failing trial of six
    "space": {"C": {"values": [0.001, 0.01, 0.1, 1, 10, -1]}},
    "parallelism": 3,
}


class PodWatch:
    """Counts a Job's pods that are not finished, at every change the API server reports."""

    def __init__(self, kube: KubeCluster, ns: str, job: str) -> None:
        self.most, self.seen = 0, set[str]()
        self._live: set[str] = set()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(kube, ns, job), daemon=True)
        self._thread.start()

    def _run(self, kube: KubeCluster, ns: str, job: str) -> None:
        with contextlib.suppress(ProtocolError):  # stop() ends the stream mid-chunk
            self._follow(kube, ns, job)

    def _follow(self, kube: KubeCluster, ns: str, job: str) -> None:
        for event in self._watch.stream(
            kube.core.list_namespaced_pod, ns, label_selector=f"job-name={job}", timeout_seconds=600
        ):
            pod = event["object"]
            name = pod.metadata.name
            self.seen.add(name)
            if event["type"] == "DELETED" or pod.status.phase in ("Succeeded", "Failed"):
                self._live.discard(name)
            else:
                self._live.add(name)
            self.most = max(self.most, len(self._live))

    def stop(self) -> None:
        self._watch.stop()


@pytest.fixture
def team_secret(
    kube_cluster: KubeCluster, operator_namespace: str, mlflow_server: MlflowServer
) -> Iterator[str]:
    team = mlflow_server.team(operator_namespace)
    kube_cluster.core.create_namespaced_secret(
        operator_namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="mlflow-search"),
            string_data={"username": team.username, "password": team.password},
        ),
    )
    yield "mlflow-search"


def child_runs(
    mlflow_server: MlflowServer, experiment_id: str, parent: str
) -> list[dict[str, Any]]:
    status, found = mlflow_server.rest(
        "POST",
        "/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [experiment_id],
            "filter": f"tags.mlflow.parentRunId = '{parent}'",
            "max_results": 100,
        },
    )
    assert status == 200, found
    return list(found.get("runs") or [])


@pytest.mark.timeout(900)
def test_a_grid_of_six_runs_three_at_once_records_a_failed_trial_and_trains_the_best(
    kube_cluster: KubeCluster,
    operator_namespace: str,
    operator: dict[str, KopfRunner],
    mlflow_server: MlflowServer,
    team_secret: str,
) -> None:
    kube, ns = kube_cluster, operator_namespace
    tracking = {"mlflow": {"trackingUri": mlflow_server.uri, "experiment": f"{ns}-search",
                           "credentialsSecret": team_secret}}  # fmt: skip
    watches = {name: PodWatch(kube, ns, f"{name}-trials") for name in ("grid-a", "grid-b")}
    for name in watches:  # the same spec twice, at once
        create(kube, ns, training(
            name, search=GRID, qualityGates={"minAccuracy": "0.8"}, tracking=tracking
        ))  # fmt: skip
    done = {name: training_finished(kube, ns, name) for name in watches}
    for w in watches.values():
        w.stop()

    for name, status in done.items():
        assert status["phase"] == "Succeeded", status
        search = status["search"]
        assert (search["total"], search["done"], search["failed"]) == (6, 6, 1), search
        assert search["progress"] == "6/6"
        assert search["metric"] == "accuracy"
        assert len(watches[name].seen) == 6, "one pod per trial"
        assert 1 <= watches[name].most <= 3, (
            f"never more than parallelism pods: {watches[name].most}"
        )
        assert search["top"][0]["status"] == "Succeeded" and len(search["top"]) == 5
        winner = search["winner"]
        assert winner["index"] == search["top"][0]["index"]
        assert search["trialsUri"] == f"{STORE}/{ns}/iris/{status['version']}/trials"
        version = get(kube, ns, "modelversions", status["modelVersion"])
        assert version is not None
        params = version["spec"]["lineage"]["params"]
        assert params["max_iter"] == 500, "the spec's hyperparameters under the winner's"
        assert params["C"] == pytest.approx(float(winner["parameters"]["C"]))
        assert condition(status, "Succeeded")["status"] == "True", "gated on the test split"
    a, b = (done[n]["search"]["winner"] for n in ("grid-a", "grid-b"))
    assert (a["index"], a["parameters"], a["value"]) == (b["index"], b["parameters"], b["value"])

    # the refused trial: recorded with its reason, and as a FAILED child run
    run = done["grid-a"]["tracking"]
    children = child_runs(mlflow_server, run["experimentId"], run["runId"])
    assert len(children) == 6, [c["info"]["run_name"] for c in children]
    by_status = sorted(c["info"]["status"] for c in children)
    assert by_status == ["FAILED", *["FINISHED"] * 5]
    failed_run = next(c for c in children if c["info"]["status"] == "FAILED")
    tags = {t["key"]: t["value"] for t in failed_run["data"]["tags"]}
    assert tags["mlkube.reason"] == "InvalidHyperparameters" and "'C'" in tags["mlkube.message"]
    assert tags["mlkube.trial"] == "5"


@pytest.mark.timeout(600)
def test_a_search_where_every_trial_fails_is_failed_with_the_first_trials_reason(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    search = {"method": "Random", "trials": 2, "parallelism": 2,
              "space": {"C": {"min": "-2", "max": "-1"}}}  # fmt: skip
    create(kube, ns, training("all-fail", model="allfail", search=search))
    status = training_finished(kube, ns, "all-fail")
    assert status["phase"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidHyperparameters"
    assert failed["message"].startswith("every trial failed; trial 0: ")
    assert (status["search"]["done"], status["search"]["failed"]) == (2, 2)
    assert get(kube, ns, "modelversions", "allfail-v1") is None


@pytest.mark.timeout(300)
def test_another_namespaces_trials_are_out_of_reach(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    """Trials are written where the operator says (the TrainingJob's own namespace); a spec that
    names another namespace's trial records, to read or to train on, is refused before any pod."""
    kube, ns = kube_cluster, operator_namespace
    theirs = f"{STORE}/another-team/iris/1/trials/trial-00000.json"
    create(kube, ns, training(
        "poke", model="poke", dataset={"uri": theirs}, search=GRID
    ))  # fmt: skip
    status = training_finished(kube, ns, "poke")
    failed = condition(status, "Failed")
    assert (status["phase"], failed["reason"]) == ("Failed", "ForbiddenURI"), status
    assert "spec.dataset.uri" in failed["message"]
    jobs = kube.batch.list_namespaced_job(ns, label_selector="mlkube.io/trainingjob=poke").items
    assert jobs == [], "no trial ran"


@pytest.mark.parametrize(
    ("search", "field", "words"),
    [
        ({"method": "Grid", "space": {"C": {"min": "0.1", "max": "10"}}},
         "spec.search.space", "a Grid must list values for every hyperparameter"),
        ({"method": "Random", "space": {"C": {"values": [1]}}},
         "spec.search.trials", "search.trials must be set for method Random"),
        ({"method": "Grid", "trials": 3, "space": {"C": {"values": [1]}}},
         "spec.search.trials", "search.trials must only be set for method Random"),
        ({"method": "Grid", "parallelism": 0, "space": {"C": {"values": [1]}}},
         "spec.search.parallelism", "should be greater than or equal to 1"),
        ({"method": "Random", "trials": 2, "space": {"C": {"min": "0", "max": "1", "log": True}}},
         "spec.search.space[C].min", "a search range with log: true must have min greater than 0"),
        ({"method": "Random", "trials": 2, "space": {"C": {"min": "2", "max": "1"}}},
         "spec.search.space[C].min", "a search range's min must be less than its max"),
        ({"method": "Random", "trials": 2, "space": {"C": {"values": [1]}}, "metric": "rmse"},
         "spec.search.metric", "must only be set for a regression estimator"),
    ],
)  # fmt: skip
def test_a_bad_search_is_refused_at_apply_time_naming_the_field(
    kube_cluster: KubeCluster, operator_namespace: str, search: dict[str, Any], field: str,
    words: str,
) -> None:  # fmt: skip
    message = rejection(kube_cluster, operator_namespace, training("bad", search=search))
    assert field in message and words in message, message
