"""The Open Inference Protocol over gRPC on the real cluster (issue 17 item 3): the Service's
``grpc`` port reaches the model from the model's own namespace and not from another team's (the
NetworkPolicy fences both ports alike), and a canary analysed on gRPC traffic alone counts those
requests and is promoted.

gRPC is HTTP/2, which the API server's proxy does not carry: the clients are pods, in the
runtime image (grpcio and the server's own generated messages are in it). Each call opens a new
connection, since the Service balances connections, not calls.

Needs a NetworkPolicy implementation (the local cluster's kube-router, which `hack/cluster up`
starts), as tests/integration/test_network_policy.py.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from mlkube.contract import DEPLOYMENT_LABEL
from tests.cluster.fixtures import KubeCluster, pod_logs, wait_pod_phase, wait_until
from tests.integration.fixtures import GROUP, VERSION, condition, create, eventually, status_of
from tests.loop import ROWS, train

pytestmark = pytest.mark.usefixtures("crds")

GRPC_PORT = 8081
CLIENT = """
import json, random, sys, time
import grpc
from mlkube.runtime.protocol import grpc_service_pb2 as pb
targets, seconds, rows = json.loads(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
draw = random.Random(7)
deadline = time.monotonic() + seconds
while True:
    for target in targets:
        request = pb.ModelInferRequest(model_name="iris")
        for name, value in draw.choice(rows).items():
            tensor = request.inputs.add(name=name, datatype="FP64", shape=[1])
            tensor.contents.fp64_contents.append(value)
        with grpc.insecure_channel(target) as channel:  # a connection a call
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            try:
                infer(request, timeout=2)
                print(json.dumps({"target": target, "code": "OK"}), flush=True)
            except grpc.RpcError as e:
                print(json.dumps({"target": target, "code": e.code().name}), flush=True)
    if time.monotonic() > deadline:
        break
    time.sleep(0.1)
"""
"""Calls ModelInfer on each target (host:port) until `seconds` have passed, one JSON line per
call."""


def _namespace(kube: KubeCluster, team: str) -> str:
    name = f"mlkube-grpc-{team}-{uuid.uuid4().hex[:6]}"
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


def _client_pod(
    kube: KubeCluster, namespace: str, targets: list[str], seconds: float, image: str
) -> str:
    name = f"grpc-client-{uuid.uuid4().hex[:6]}"
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
                    command=[
                        "python", "-c", CLIENT, json.dumps(targets), str(seconds), json.dumps(ROWS)
                    ],
                )
            ],
        ),
    )  # fmt: skip
    kube.core.create_namespaced_pod(namespace, pod)
    return name


def _calls(kube: KubeCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in pod_logs(kube, namespace, name).splitlines() if line]


def _tries(
    kube: KubeCluster, namespace: str, targets: list[str], image: str
) -> dict[str, Counter[str]]:
    """The codes a pod of `namespace` got from each target over about five seconds (a new pod's
    address reaches the firewall's sets a moment after it starts: a first refusal is no
    verdict)."""
    name = _client_pod(kube, namespace, targets, 5, image)
    wait_pod_phase(kube, namespace, name, {"Succeeded"}, 120)
    codes: dict[str, Counter[str]] = {target: Counter() for target in targets}
    for call in _calls(kube, namespace, name):
        codes[call["target"]][call["code"]] += 1
    return codes


@pytest.mark.timeout(1200)
def test_grpc_reaches_its_namespace_not_another_and_a_canary_counts_it(
    kube_cluster: KubeCluster, teams: tuple[str, str], runtime_image: str
) -> None:
    kube, (a, b) = kube_cluster, teams
    train(kube, a, "iris-1")
    create(kube, a, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": "iris"},
        "spec": {
            "model": "iris", "latestApproved": True, "replicas": 1,
            "strategy": {"canary": {
                "steps": [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}],
                "analysis": {"intervalSeconds": 5, "minRequestCount": 40,
                             "maxErrorRatePercent": "5", "maxPredictionShift": "1"},
                "scaleDownDelaySeconds": 5,
            }},
        },
    })  # fmt: skip
    eventually(
        lambda: (
            condition(status_of(kube, a, "deployments", "iris"), "Ready").get("status") == "True"
        ),
        240,
        "Deployment iris to serve iris-v1",
    )
    service = kube.core.read_namespaced_service("iris", a)
    assert {(p.name, p.port) for p in service.spec.ports} == {("http", 3000), ("grpc", GRPC_PORT)}
    pod = kube.core.list_namespaced_pod(a, label_selector=f"{DEPLOYMENT_LABEL}=iris").items[0]
    targets = [f"{service.spec.cluster_ip}:{GRPC_PORT}", f"{pod.status.pod_ip}:{GRPC_PORT}"]

    own = _tries(kube, a, targets, runtime_image)
    assert all(codes["OK"] for codes in own.values()), f"team A's own pod was refused: {own}"
    other = _tries(kube, b, targets, runtime_image)
    assert all(sum(codes.values()) for codes in other.values()), other
    assert not any(codes["OK"] for codes in other.values()), (
        f"a pod of team B reached team A's gRPC port: {other}; is a NetworkPolicy "
        "implementation running (the local cluster's kube-router: hack/cluster status)?"
    )

    # gRPC traffic only, from team A's namespace, through the Service, while v2 is a canary
    traffic = _client_pod(kube, a, targets[:1], 600, runtime_image)
    train(kube, a, "iris-2")
    seen: dict[str, Any] = {}

    def promoted() -> dict[str, Any] | None:
        seen.update(status_of(kube, a, "deployments", "iris"))
        return seen if seen.get("stableVersion") == "iris-v2" else None

    try:
        done = eventually(promoted, 420, "v2 promoted on gRPC traffic alone")
    except AssertionError as e:
        raise AssertionError(f"{e}: {seen}") from None
    calls = Counter(call["code"] for call in _calls(kube, a, traffic))
    kube.core.delete_namespaced_pod(traffic, a, grace_period_seconds=0)
    analysis = done["lastAnalysis"]
    assert analysis["result"] == "Passed", analysis
    assert analysis["requests"] >= 40, f"the canary's gRPC calls were not counted: {analysis}"
    assert calls["OK"] >= analysis["requests"], (calls, analysis)
