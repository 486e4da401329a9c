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
import time
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
    # the hostnames first: a host named after a route without hostnames would take that route's
    # requests for the host (a named host outranks every path), and is refused
    create(kube, a, deployment("hosted", gateway, hostnames=[f"iris.{a}.example.com"]))
    create(kube, b, deployment("hosted", gateway, hostnames=[f"iris.{b}.example.com"]))
    for ns in (a, b):
        eventually(
            lambda ns=ns: matched(kube, ns, "hosted") == ([f"iris.{ns}.example.com"], "/"),
            240,
            f"{ns}'s route on its own hostname",
        )
    create(kube, a, deployment("pathed", gateway))
    create(kube, b, deployment("pathed", gateway))
    for ns in (a, b):
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
        # `kubectl get` shows it too: the phase says Degraded, and why
        status = status_of(kube, b, "deployments", name)
        assert status["phase"] == "Degraded", status
        assert condition(status, "Degraded")["reason"] == "RouteConflict"

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
    # nor the namespace's own path element, which would take its later default paths
    create(kube, b, deployment("above", gateway, pathPrefix=f"/serving/{a}"))
    found = eventually(lambda: refused(kube, b, "above"), 240, "the route above them refused")
    assert f"is under /serving/{a}, the default paths of namespace {a}'s" in found["message"]
    assert stored_route(kube, b, "above") is None


def fresh_gateway(gateway: dict[str, str]) -> dict[str, str]:
    """A Gateway of the test's own: what it routes cannot meet the other tests' routes."""
    return {**gateway, "name": f"gw-{uuid.uuid4().hex[:6]}"}


def delete(kube: KubeCluster, ns: str, name: str) -> None:
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "deployments", name)


@pytest.mark.timeout(600)
def test_deployments_created_at_the_same_moment_are_never_both_routed(
    kube_cluster: KubeCluster, teams: tuple[str, str], gateway: dict[str, str]
) -> None:
    # the report: the same hostname from two namespaces at once, four times: in 3 of 4 runs
    # both HTTPRoutes were written (the loser's claim was dropped while its route was unwritten)
    kube, (a, b) = kube_cluster, teams
    for run in range(4):
        parent = fresh_gateway(gateway)
        name = f"race-{run}"
        create(kube, a, deployment(name, parent, hostnames=["r.example.com"]))
        create(kube, b, deployment(name, parent, hostnames=["r.example.com"]))

        def settled(name: str = name) -> tuple[str, str] | None:
            routed = [ns for ns in (a, b) if stored_route(kube, ns, name) is not None]
            losers = [ns for ns in (a, b) if refused(kube, ns, name)]
            return (routed[0], losers[0]) if len(routed) == 1 and len(losers) == 1 else None

        winner, loser = eventually(settled, 240, f"run {run}: one routed, one refused")
        assert winner != loser
        assert f"Deployment {winner}/{name}'s HTTPRoute" in refused(kube, loser, name)["message"]  # type: ignore[index]
        time.sleep(3)  # a late write would show by now
        assert stored_route(kube, loser, name) is None, f"run {run}: both routed"
        assert not refused(kube, winner, name)
        for ns in (a, b):
            delete(kube, ns, name)


@pytest.mark.timeout(600)
def test_deployments_looking_at_the_same_moment_are_never_both_routed(
    kube_cluster: KubeCluster, teams: tuple[str, str], gateway: dict[str, str]
) -> None:
    # the same, from two Deployments refused because of one route: they look at once when it goes
    kube, (a, b) = kube_cluster, teams
    for run in range(4):
        parent, name = fresh_gateway(gateway), f"race-{run}"
        create(kube, a, deployment("holder", parent, hostnames=["r.example.com"]))
        eventually(lambda: stored_route(kube, a, "holder"), 240, f"run {run}: the holder's route")
        for ns in (a, b):
            create(kube, ns, deployment(name, parent, hostnames=["r.example.com"]))
        for ns in (a, b):
            eventually(lambda ns=ns, n=name: refused(kube, ns, n), 120, f"run {run}: {ns} refused")
        delete(kube, a, "holder")

        def settled(name: str = name) -> tuple[str, str] | None:
            routed = [ns for ns in (a, b) if stored_route(kube, ns, name) is not None]
            losers = [ns for ns in (a, b) if refused(kube, ns, name)]
            return (routed[0], losers[0]) if len(routed) == 1 and len(losers) == 1 else None

        winner, loser = eventually(settled, 120, f"run {run}: one routed, one refused")
        time.sleep(3)  # a late write would show by now
        assert stored_route(kube, loser, name) is None, f"run {run}: both routed"
        found = refused(kube, loser, name)
        assert found and f"Deployment {winner}/{name}'s HTTPRoute" in found["message"]
        assert not refused(kube, winner, name)
        for ns in (a, b):
            delete(kube, ns, name)
        eventually(lambda: stored_route(kube, a, "holder") is None, 120, "the holder gone")


@pytest.mark.timeout(600)
def test_a_route_admitted_first_keeps_its_requests_whatever_comes_after(
    kube_cluster: KubeCluster, teams: tuple[str, str], gateway: dict[str, str]
) -> None:
    kube, (a, b) = kube_cluster, teams
    parent = fresh_gateway(gateway)
    host = "m.example.com"
    # team A's longer path first, then team B's shorter one beside it (the longer keeps
    # /iris/v2); team A's route deleted by hand is written again as it was, never refused
    create(kube, a, deployment("long", parent, hostnames=[host], pathPrefix="/iris/v2"))
    eventually(lambda: matched(kube, a, "long") == ([host], "/iris/v2"), 240, "long's route")
    create(kube, b, deployment("short", parent, hostnames=[host], pathPrefix="/iris"))
    eventually(lambda: matched(kube, b, "short") == ([host], "/iris"), 120, "short's route")
    kube.custom.delete_namespaced_custom_object(GATEWAY_API_GROUP, "v1", a, "httproutes", "long")
    eventually(lambda: matched(kube, a, "long") == ([host], "/iris/v2"), 120, "long's route back")
    assert not refused(kube, a, "long")

    # team A's default paths, then team B's route on every path of every host: admitted (it
    # takes none of their requests); team A's route deleted by hand comes back, and a new
    # Deployment of team A gets its default path too (the report: both were refused)
    create(kube, a, deployment("owned", parent))
    eventually(lambda: matched(kube, a, "owned") == ([], f"/serving/{a}/owned"), 120, "owned")
    # a host named now would take team A's default path on that host: refused
    create(kube, b, deployment("named", parent, hostnames=["gw.example.com"]))
    found = eventually(lambda: refused(kube, b, "named"), 120, "the named host refused")
    assert f"Deployment {a}/owned's HTTPRoute" in found["message"]
    assert f"requests for gw.example.com, path /serving/{a}/owned" in found["message"]
    assert stored_route(kube, b, "named") is None
    create(kube, b, deployment("everything", parent, pathPrefix="/"))
    eventually(lambda: matched(kube, b, "everything") == ([], "/"), 120, "the route on /")
    kube.custom.delete_namespaced_custom_object(GATEWAY_API_GROUP, "v1", a, "httproutes", "owned")
    eventually(lambda: matched(kube, a, "owned") == ([], f"/serving/{a}/owned"), 120, "owned back")
    create(kube, a, deployment("later", parent))
    eventually(lambda: matched(kube, a, "later") == ([], f"/serving/{a}/later"), 120, "later")
    for ns, name in ((a, "long"), (b, "short"), (a, "owned"), (b, "everything"), (a, "later")):
        assert not refused(kube, ns, name), f"{ns}/{name} refused"


@pytest.mark.parametrize(
    ("route", "traffic", "message"),
    [
        ({"hostnames": ["Models.Example.com"]}, "GatewayAPI", "spec.route.hostnames[0]"),
        ({"hostnames": ["a.*.example.com"]}, "GatewayAPI", "spec.route.hostnames[0]"),
        ({"hostnames": ["10.0.0.1"]}, "GatewayAPI", "hostnames must be names, not IP addresses"),
        ({"hostnames": ["127.1"]}, "GatewayAPI", "hostnames must be names, not IP addresses"),
        ({"hostnames": ["2130706433"]}, "GatewayAPI", "hostnames must be names, not IP"),
        ({"hostnames": [f"{'a' * 70}.example.com"]}, "GatewayAPI", "spec.route.hostnames[0]"),
        ({"hostnames": ["*.com"]}, "GatewayAPI", "spec.route.hostnames[0]"),
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
        "short-ip",
        "numeric",
        "long-label",
        "top-level-wildcard",
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
