"""Another client's bad requests cannot fail a team's canary (issue 16 item 3), on the real
cluster: a flood of `GET /predict` (each a 405, a client error) spread over canary and stable by
the Service does not roll the canary back, since a canary's 4xx count only beyond the stable's."""

from __future__ import annotations

import threading

import pytest
from kopf.testing import KopfRunner

from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import GROUP, VERSION, create, eventually, status_of
from tests.loop import ROWS, Traffic, predict, train

pytestmark = pytest.mark.usefixtures("crds")


def flood(kube: KubeCluster, namespace: str, stop: threading.Event, statuses: list[int]) -> None:
    """GETs on /predict through the API server's service proxy until `stop`; their statuses."""
    api = kube.api_client
    while not stop.is_set():
        method, url, headers, body, _ = api.param_serialize(
            "GET",
            f"/api/v1/namespaces/{namespace}/services/iris:http/proxy/predict",
            auth_settings=["BearerToken"],
        )
        try:
            statuses.append(api.call_api(method, url, headers, body, _request_timeout=10).status)
        except Exception:  # a refused request is counted as such
            statuses.append(599)


@pytest.mark.timeout(900)
def test_a_flood_of_client_errors_does_not_roll_back_a_good_canary(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    train(kube, ns, "iris-1")
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": "iris"},
        "spec": {
            "model": "iris", "latestApproved": True, "replicas": 1,
            "strategy": {"canary": {
                "steps": [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}],
                "analysis": {"intervalSeconds": 5, "minRequestCount": 30, "maxErrorRatePercent": "5",
                             "maxPredictionShift": "1"},  # only client errors could fail it
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

    statuses: list[int] = []
    with Traffic(kube, ns) as traffic:
        train(kube, ns, "iris-2", estimator={"className": "sklearn.naive_bayes.GaussianNB"})
        eventually(
            lambda: status_of(kube, ns, "deployments", "iris").get("canaryVersion") == "iris-v2",
            180,
            "v2's canary to start",
        )
        stop = threading.Event()
        flooding = threading.Thread(target=flood, args=(kube, ns, stop, statuses), daemon=True)
        flooding.start()
        seen: dict[str, object] = {}

        def promoted_v2() -> dict[str, object] | None:
            seen.update(status_of(kube, ns, "deployments", "iris"))
            return seen if seen.get("stableVersion") == "iris-v2" else None

        try:
            promoted = eventually(promoted_v2, 300, "v2 to be promoted despite the flood")
        except AssertionError as e:
            raise AssertionError(f"{e}: {seen}, flood statuses {set(statuses)}") from None
        stop.set()
        flooding.join(timeout=30)
    assert statuses.count(405) >= 150, f"the flood reached the servers: {set(statuses)}"
    assert promoted["lastAnalysis"]["result"] == "Passed", promoted["lastAnalysis"]
    assert promoted.get("abortedVersion") is None
    assert set(traffic.statuses) == {200}, f"every good request answered: {traffic.statuses}"
