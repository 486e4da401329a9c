"""Two teams on one cluster (issue 16, item 2): team A's model answers pods of team A and the API
server's proxies (`predict`, the canary's pod-proxy scrapes), not pods of team B, until A's
Deployment lets B in; `networkPolicy.enabled: false` removes the fence.

Needs a NetworkPolicy implementation: the local cluster's kube-router (firewall only), which
`hack/cluster up` starts. Without one the policies are stored but nothing enforces them, and the
first check says so.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlkube.contract import DEPLOYMENT_LABEL
from mlkube.controller.kube import Cluster
from tests.cluster.fixtures import KubeCluster, pod_logs, wait_pod_phase, wait_until
from tests.integration.fixtures import (
    GROUP,
    VERSION,
    condition,
    create,
    eventually,
    status_of,
)
from tests.loop import ROWS, predict, train

pytestmark = pytest.mark.usefixtures("crds")

PORT = 3000
CLIENT = """
import json, sys, time, urllib.request
urls, attempts = json.loads(sys.argv[1]), int(sys.argv[2])
body = json.dumps({"instances": [json.loads(sys.argv[3])]}).encode()
for attempt in range(attempts):
    for url in urls:
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                print(json.dumps({"url": url, "status": answer.status}), flush=True)
        except Exception as e:
            print(json.dumps({"url": url, "error": repr(e)}), flush=True)
    time.sleep(1)
"""
"""POSTs one row to each URL `attempts` times a second apart, one JSON line per try: a new pod's
address reaches the firewall's sets a moment after it starts, so a first refusal is no verdict."""


def _namespace(kube: KubeCluster, team: str) -> str:
    name = f"mlkube-np-{team}-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_until(
        lambda: kube.core.read_namespaced_service_account("default", name),
        60,
        f"ServiceAccount default in {name}",
    )
    return name


@pytest.fixture(scope="module")
def teams(kube_cluster: KubeCluster, runtime_image: str) -> Iterator[tuple[str, str]]:
    """Namespaces of team A and team B, and the operator in-process watching both."""
    a, b = _namespace(kube_cluster, "a"), _namespace(kube_cluster, "b")
    os.environ["KUBECONFIG"] = kube_cluster.kubeconfig
    os.environ["MLKUBE_RUNTIME_IMAGE"] = runtime_image
    os.environ["MLKUBE_METRICS_PORT"] = "0"
    command = ["run", "--standalone", "--namespace", a, "--namespace", b]
    with KopfRunner([*command, "-m", "mlkube.controller.main"]):
        yield a, b
    for name in (a, b):
        kube_cluster.core.delete_namespace(name)


def _tries(
    kube: KubeCluster, namespace: str, urls: list[str], image: str, attempts: int = 5
) -> list[dict[str, Any]]:
    """What a pod of `namespace` got from each of `urls`, try by try."""
    name = f"client-{uuid.uuid4().hex[:6]}"
    args = [json.dumps(urls), str(attempts), json.dumps(ROWS[0])]
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=1,
            automount_service_account_token=False,
            containers=[
                client.V1Container(
                    name="main",
                    image=image,
                    image_pull_policy="IfNotPresent",
                    command=["python", "-c", CLIENT, *args],
                )
            ],
        ),
    )
    kube.core.create_namespaced_pod(namespace, pod)
    wait_pod_phase(kube, namespace, name, {"Succeeded"}, 120)
    return [json.loads(line) for line in pod_logs(kube, namespace, name).splitlines() if line]


def _answered(tries: list[dict[str, Any]], url: str) -> bool:
    return any(t.get("status") == 200 for t in tries if t["url"] == url)


def _policy(kube: KubeCluster, namespace: str) -> Any:
    try:
        return client.NetworkingV1Api(kube.api_client).read_namespaced_network_policy(
            "iris", namespace
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _patch_deployment(kube: KubeCluster, namespace: str, network_policy: dict[str, Any]) -> None:
    kube.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "deployments",
        "iris",
        {"spec": {"networkPolicy": network_policy}},
    )


@pytest.mark.timeout(420)
def test_a_teams_model_answers_its_namespace_and_the_api_server_not_other_teams(
    kube_cluster: KubeCluster, teams: tuple[str, str], runtime_image: str
) -> None:
    kube, (a, b) = kube_cluster, teams
    train(kube, a, "iris-1")
    create(kube, a, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": "iris"},
        "spec": {"modelVersion": "iris-v1", "port": PORT},
    })  # fmt: skip
    eventually(
        lambda: (
            condition(status_of(kube, a, "deployments", "iris"), "Ready").get("status") == "True"
        ),
        180,
        "Deployment iris to serve iris-v1",
    )
    fence = _policy(kube, a)
    assert fence is not None, "the operator wrote the Deployment's NetworkPolicy"
    assert fence.metadata.owner_references[0].kind == "Deployment"
    assert fence.spec.pod_selector.match_labels[DEPLOYMENT_LABEL] == "iris"

    # the API server's proxies: `predict` through the Service, the canary's scrape through the pod
    status, answer = predict(kube, a, ROWS[:3])
    assert status == 200, answer
    pod = kube.core.list_namespaced_pod(a, label_selector=f"{DEPLOYMENT_LABEL}=iris").items[0]
    scraped = Cluster(kube.kubeconfig).scrape(a, [pod.metadata.name], PORT, 5.0, 4 << 20)
    assert "mlkube_predictions_total" in scraped.texts.get(pod.metadata.name, ""), scraped

    service = kube.core.read_namespaced_service("iris", a).spec.cluster_ip
    urls = [f"http://{service}:{PORT}/predict", f"http://{pod.status.pod_ip}:{PORT}/predict"]
    own = _tries(kube, a, urls, runtime_image)
    assert all(_answered(own, url) for url in urls), f"team A's own pod was refused: {own}"
    other = _tries(kube, b, urls, runtime_image)
    reached = [t for t in other if "status" in t]
    assert not reached, (
        f"a pod of team B reached team A's model: {reached}; is a NetworkPolicy implementation "
        "running (the local cluster's kube-router: hack/cluster status)?"
    )

    # team A lets team B in by name
    _patch_deployment(kube, a, {"allowedNamespaces": [b]})
    eventually(
        lambda: any(
            (peer.namespace_selector and peer.namespace_selector.match_labels)
            == {"kubernetes.io/metadata.name": b}
            for peer in (_policy(kube, a).spec.ingress[0]._from or [])
        ),
        60,
        "team B in the policy",
    )
    let_in = _tries(kube, b, urls, runtime_image)
    assert all(_answered(let_in, url) for url in urls), f"team B still refused: {let_in}"

    # turned off: the policy goes
    _patch_deployment(kube, a, {"enabled": False})
    eventually(lambda: _policy(kube, a) is None, 60, "the NetworkPolicy to be deleted")
