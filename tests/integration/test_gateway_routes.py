"""Two teams on one shared Gateway (issue 16, item 4): each Deployment's HTTPRoute carries its
hostnames and a PathPrefix, and a route that would take requests another team's route receives
is refused, so another namespace can neither reach a team's model through the gateway nor stall
it (the team's route stays as it was). The refused one is admitted once the other route goes.

The Gateway API's standard-channel CRDs are installed; no gateway controller runs, so the tests
read the routes the API server stored. No Gateway of the parent's name needs to exist.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.fixtures import KubeCluster, wait_until
from tests.integration.fixtures import (
    GATEWAY_API_GROUP,
    GROUP,
    VERSION,
    condition,
    create,
    eventually,
    status_of,
    training_finished,
)
from tests.loop import training

pytestmark = pytest.mark.usefixtures("crds", "gateway_api_crds")

HOST = "models.example.com"


def _namespace(kube: KubeCluster, team: str) -> str:
    name = f"mlkube-gw-{team}-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_until(
        lambda: kube.core.read_namespaced_service_account("default", name),
        60,
        f"ServiceAccount default in {name}",
    )
    return name


@pytest.fixture(scope="module")
def teams(kube_cluster: KubeCluster, runtime_image: str) -> Iterator[tuple[str, str]]:
    """Namespaces of team A and team B, each with an approved ModelVersion iris-v1, and the
    operator in-process watching both."""
    a, b = _namespace(kube_cluster, "a"), _namespace(kube_cluster, "b")
    os.environ["KUBECONFIG"] = kube_cluster.kubeconfig
    os.environ["MLKUBE_RUNTIME_IMAGE"] = runtime_image
    os.environ["MLKUBE_METRICS_PORT"] = "0"
    command = ["run", "--standalone", "--namespace", a, "--namespace", b]
    with KopfRunner([*command, "-m", "mlkube.controller.main"]):
        for ns in (a, b):
            create(kube_cluster, ns, training("iris-1"))
        for ns in (a, b):
            done = training_finished(kube_cluster, ns, "iris-1")
            assert done["phase"] == "Succeeded", done
        yield a, b
    for name in (a, b):
        kube_cluster.core.delete_namespace(name)


@pytest.fixture(scope="module")
def gateway() -> dict[str, str]:
    """The parent both teams attach to: one Gateway in a namespace of its own."""
    return {"name": "shared", "namespace": f"mlkube-gw-infra-{uuid.uuid4().hex[:6]}"}


def deployment(name: str, gateway: dict[str, str], **route: Any) -> dict[str, Any]:
    """Serving iris-v1 on the gateway with no pods (replicas 0): the route is written as soon as
    the version is servable."""
    spec: dict[str, Any] = {
        "modelVersion": "iris-v1",
        "replicas": 0,
        "traffic": "GatewayAPI",
        "gateway": gateway,
    }
    if route:
        spec["route"] = route
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def stored_route(kube: KubeCluster, ns: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = kube.custom.get_namespaced_custom_object(
            GATEWAY_API_GROUP, "v1", ns, "httproutes", name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return found


def matched(kube: KubeCluster, ns: str, name: str) -> tuple[list[str], str] | None:
    """(hostnames, PathPrefix) of the Deployment's HTTPRoute; None while there is none."""
    found = stored_route(kube, ns, name)
    if found is None:
        return None
    rule = found["spec"]["rules"][0]
    return found["spec"].get("hostnames", []), rule["matches"][0]["path"]["value"]


def ready(kube: KubeCluster, ns: str, name: str) -> dict[str, Any]:
    return condition(status_of(kube, ns, "deployments", name), "Ready")


def refused(kube: KubeCluster, ns: str, name: str) -> dict[str, Any] | None:
    """The Ready condition once it says RouteConflict."""
    found = ready(kube, ns, name)
    return found if found.get("reason") == "RouteConflict" else None


def warnings(kube: KubeCluster, ns: str, name: str) -> list[str]:
    events = kube.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    return [e.message for e in events.items if e.reason == "RouteConflict" and e.type == "Warning"]


def patch_route(kube: KubeCluster, ns: str, name: str, route: dict[str, Any]) -> None:
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "deployments", name, {"spec": {"route": route}}
    )


@pytest.mark.timeout(600)
def test_distinct_hostnames_share_the_gateway_and_default_paths_never_collide(
    kube_cluster: KubeCluster, teams: tuple[str, str], gateway: dict[str, str]
) -> None:
    kube, (a, b) = kube_cluster, teams
    create(kube, a, deployment("hosted", gateway, hostnames=[f"iris.{a}.example.com"]))
    create(kube, b, deployment("hosted", gateway, hostnames=[f"iris.{b}.example.com"]))
    create(kube, a, deployment("pathed", gateway))
    create(kube, b, deployment("pathed", gateway))
    for ns in (a, b):
        eventually(
            lambda ns=ns: matched(kube, ns, "hosted") == ([f"iris.{ns}.example.com"], "/"),
            240,
            f"{ns}'s route on its own hostname",
        )
        eventually(
            lambda ns=ns: matched(kube, ns, "pathed") == ([], f"/serving/{ns}/pathed"),
            60,
            f"{ns}'s route on its default path",
        )
        rule = stored_route(kube, ns, "pathed")["spec"]["rules"][0]  # type: ignore[index]
        assert rule["filters"][0]["urlRewrite"]["path"] == {
            "type": "ReplacePrefixMatch",
            "replacePrefixMatch": "/",
        }
        assert rule["backendRefs"][0]["name"] == "pathed-iris-v1"
        parent = stored_route(kube, ns, "hosted")["spec"]["parentRefs"][0]  # type: ignore[index]
        assert (parent["name"], parent["namespace"]) == (gateway["name"], gateway["namespace"])
        for name in ("hosted", "pathed"):
            assert ready(kube, ns, name).get("reason") != "RouteConflict"
            assert not warnings(kube, ns, name)


@pytest.mark.timeout(600)
def test_a_route_that_would_take_another_teams_requests_is_refused_until_that_one_goes(
    kube_cluster: KubeCluster, teams: tuple[str, str], gateway: dict[str, str]
) -> None:
    kube, (a, b) = kube_cluster, teams
    create(kube, a, deployment("owner", gateway, hostnames=[HOST], pathPrefix="/iris"))
    eventually(lambda: matched(kube, a, "owner") == ([HOST], "/iris"), 240, "team A's route")
    held = stored_route(kube, a, "owner")

    # team B: the same hostname and path, and a path under it: each would take requests
    # team A's route receives
    create(kube, b, deployment("same", gateway, hostnames=[HOST], pathPrefix="/iris"))
    create(kube, b, deployment("deeper", gateway, hostnames=[HOST], pathPrefix="/iris/v2"))
    for name, request in (("same", f"{HOST}, path /iris"), ("deeper", f"{HOST}, path /iris/v2")):
        found = eventually(lambda name=name: refused(kube, b, name), 240, f"{name} refused")
        assert found["status"] == "False"
        assert (
            f"Deployment {a}/owner's HTTPRoute (hostnames {HOST}, pathPrefix /iris)"
            in (found["message"])
        )
        assert f"receives requests for {request}" in found["message"]
        assert stored_route(kube, b, name) is None, f"{name} got a route"
        assert found["message"] in warnings(kube, b, name)

    # a path of its own on the same hostname shares the gateway; edited onto team A's path it
    # is refused and keeps what it had, and edited back it is admitted again
    create(kube, b, deployment("apart", gateway, hostnames=[HOST], pathPrefix="/wine"))
    eventually(lambda: matched(kube, b, "apart") == ([HOST], "/wine"), 60, "team B's own path")
    patch_route(kube, b, "apart", {"hostnames": [HOST], "pathPrefix": "/iris"})
    found = eventually(lambda: refused(kube, b, "apart"), 60, "the edit to be refused")
    assert found["message"].endswith(
        f"its HTTPRoute keeps hostnames {HOST}, pathPrefix /wine meanwhile"
    )
    assert matched(kube, b, "apart") == ([HOST], "/wine")
    patch_route(kube, b, "apart", {"hostnames": [HOST], "pathPrefix": "/wine"})
    eventually(lambda: not refused(kube, b, "apart"), 60, "apart admitted again")

    # team B never disturbed team A's route
    assert stored_route(kube, a, "owner")["spec"] == held["spec"]  # type: ignore[index]
    assert ready(kube, a, "owner").get("reason") != "RouteConflict"

    # team A's Deployment goes, its route with it: the refused ones look again at once (within
    # the 60 s of their safety net's requeue); "same" takes the path, and "deeper", which would
    # take a part of it, stays refused, now naming "same" (or, if it looked first, "same" leaves
    # it its sub-path: a gateway gives /iris/v2 to the longer prefix)
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, a, "deployments", "owner")
    eventually(lambda: stored_route(kube, a, "owner") is None, 120, "team A's route to go")
    eventually(lambda: matched(kube, b, "same") == ([HOST], "/iris"), 50, "same to be admitted")
    eventually(lambda: not refused(kube, b, "same"), 30, "same's RouteConflict to clear")
    deeper = eventually(
        lambda: (
            matched(kube, b, "deeper") == ([HOST], "/iris/v2")
            or ((r := refused(kube, b, "deeper")) and f"Deployment {b}/same's" in r["message"])
        ),
        30,
        "deeper to be admitted under same, or refused naming it",
    )
    assert deeper


@pytest.mark.timeout(300)
def test_a_path_under_another_namespaces_default_paths_is_refused(
    kube_cluster: KubeCluster, teams: tuple[str, str], gateway: dict[str, str]
) -> None:
    kube, (a, b) = kube_cluster, teams
    create(kube, b, deployment("squat", gateway, pathPrefix=f"/serving/{a}/iris"))
    found = eventually(lambda: refused(kube, b, "squat"), 240, "the squatting route refused")
    assert found["message"] == (
        f"spec.route.pathPrefix /serving/{a}/iris is under /serving/{a}, the default paths of "
        f"namespace {a}'s Deployments"
    )
    assert stored_route(kube, b, "squat") is None


@pytest.mark.parametrize(
    ("route", "traffic", "message"),
    [
        ({"hostnames": ["Models.Example.com"]}, "GatewayAPI", "spec.route.hostnames[0]"),
        ({"hostnames": ["a.*.example.com"]}, "GatewayAPI", "spec.route.hostnames[0]"),
        ({"hostnames": ["10.0.0.1"]}, "GatewayAPI", "hostnames must be names, not IP addresses"),
        ({"hostnames": ["a.example.com", "a.example.com"]}, "GatewayAPI", "Duplicate value"),
        ({"pathPrefix": "iris"}, "GatewayAPI", "spec.route.pathPrefix"),
        ({"pathPrefix": "/iris/"}, "GatewayAPI", "spec.route.pathPrefix"),
        ({"pathPrefix": "/a/../b"}, "GatewayAPI", "pathPrefix must not have a . or .. element"),
        ({"hostnames": ["a.example.com"]}, "Replicas", "route must be unset unless traffic"),
    ],
    ids=[
        "upper-case",
        "inner-wildcard",
        "ip",
        "twice",
        "relative",
        "trailing",
        "dot-dot",
        "replicas",
    ],
)
def test_a_bad_route_is_refused_at_apply_time_naming_the_field(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    namespace: str,
    tmp_path: Path,
    route: dict[str, Any],
    traffic: str,
    message: str,
) -> None:
    manifest = deployment("bad", {"name": "shared"}, **route)
    manifest["spec"]["traffic"] = traffic
    if traffic == "Replicas":
        del manifest["spec"]["gateway"]
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(manifest))
    applied = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert applied.returncode != 0, applied.stdout
    assert message in applied.stderr, applied.stderr
