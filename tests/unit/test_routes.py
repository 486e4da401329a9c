"""Which requests a Deployment's HTTPRoute may take on a shared Gateway (issue 16, item 4).

A Deployment's route is refused when its hostnames overlap another Deployment's stored route's
and its path prefix is that route's or under it: a gateway (Gateway API precedence: precise
hostname, longest PathPrefix, oldest route) would give it that route's requests, or a tie it
never answers. Where two stored routes tie, the older keeps the requests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mlkube.api.deployment import DeploymentSpec, DeploymentStatus
from mlkube.controller.cache import Routes
from mlkube.core.conditions import set_condition
from mlkube.core.routes import (
    ROUTE_CONFLICT,
    Route,
    StoredRoute,
    desired_route,
    route_conflict,
    route_refused,
    stored_route,
)

T0 = "2026-12-01T10:00:00Z"
T1 = "2026-12-01T11:00:00Z"
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def route(
    *hostnames: str, path: str = "/", gateway: str = "shared", section: str | None = None
) -> Route:
    return Route("infra", gateway, section, tuple(hostnames), path)


def stored(name: str, r: Route, created: str = T0, namespace: str = "team-a") -> StoredRoute:
    return StoredRoute(namespace, name, created, r)


def refused(wanted: Route, *others: StoredRoute, own: StoredRoute | None = None) -> str | None:
    """The refusal's message for team-b/new, None when admitted."""
    found = route_conflict("team-b", "new", wanted, own, list(others))
    return None if found is None else found.message


# -- hostnames ---------------------------------------------------------------------------------


def test_distinct_hostnames_share_a_gateway() -> None:
    assert refused(route("b.example.com"), stored("a", route("a.example.com"))) is None


def test_the_same_hostname_and_path_is_refused_naming_the_holder_and_the_request() -> None:
    message = refused(route("a.example.com"), stored("iris", route("a.example.com")))
    assert message is not None
    assert "Deployment team-a/iris's HTTPRoute (hostnames a.example.com, pathPrefix /)" in message
    assert "on Gateway infra/shared" in message
    assert "requests for a.example.com, path /" in message


def test_hostnames_match_case_by_case_and_one_shared_name_is_enough() -> None:
    held = stored("a", route("a.example.com", "www.example.com"))
    assert refused(route("www.example.com", "c.example.com"), held) is not None
    assert refused(route("c.example.com"), held) is None


def test_an_exact_hostname_under_anothers_wildcard_is_refused() -> None:
    # a.example.com is more precise than *.example.com: a gateway would give it those requests
    message = refused(route("a.example.com"), stored("wild", route("*.example.com")))
    assert message is not None and "requests for a.example.com, path /" in message


def test_a_wildcard_over_anothers_exact_hostname_is_refused_too() -> None:
    # a gateway would leave a.example.com to the exact name, but the two overlap: one owner each
    message = refused(route("*.example.com"), stored("a", route("a.example.com")))
    assert message is not None and "requests for a.example.com" in message


def test_nested_wildcards_overlap_either_way() -> None:
    message = refused(route("*.eu.example.com"), stored("wild", route("*.example.com")))
    assert message is not None and "requests for *.eu.example.com" in message
    assert refused(route("*.example.com"), stored("eu", route("*.eu.example.com"))) is not None
    assert refused(route("*.example.org"), stored("wild", route("*.example.com"))) is None


def test_a_wildcard_does_not_match_its_own_suffix() -> None:
    # *.example.com matches a.example.com, never example.com itself
    assert refused(route("example.com"), stored("wild", route("*.example.com"))) is None


def test_routes_without_hostnames_compete_only_with_each_other() -> None:
    message = refused(route(), stored("any", route()))
    assert message is not None and "requests for any host, path /" in message
    # a route naming a host takes only that host from one naming none (a gateway gives a
    # request to the route naming its host), and one naming none claims no name
    assert refused(route("a.example.com"), stored("any", route())) is None
    assert (
        refused(route(path="/serving/team-b/new"), stored("named", route("a.example.com"))) is None
    )
    assert refused(route(), stored("named", route("a.example.com"))) is None


# -- paths -------------------------------------------------------------------------------------


def test_a_sub_path_of_anothers_prefix_steals_it() -> None:
    message = refused(route(path="/team-a/iris/v2"), stored("iris", route(path="/team-a/iris")))
    assert message is not None and "path /team-a/iris/v2" in message


def test_a_shorter_prefix_leaves_anothers_longer_one_alone() -> None:
    assert refused(route(path="/team-a"), stored("iris", route(path="/team-a/iris"))) is None


def test_prefixes_match_whole_path_elements() -> None:
    assert refused(route(path="/irisx"), stored("iris", route(path="/iris"))) is None
    assert refused(route(path="/iris/x"), stored("iris", route(path="/iris"))) is not None


def test_a_path_under_anothers_prefix_on_an_overlapping_hostname_is_refused() -> None:
    held = stored("a", route("a.example.com", path="/"))
    message = refused(route("*.example.com", path="/deep/path"), held)
    assert message is not None and "requests for a.example.com, path /deep/path" in message
    assert refused(route("b.example.com", path="/deep/path"), held) is None


# -- parents -----------------------------------------------------------------------------------


def test_routes_on_other_gateways_or_listeners_never_conflict() -> None:
    assert refused(route(gateway="other"), stored("a", route())) is None
    assert refused(route(section="https"), stored("a", route(section="http"))) is None


def test_a_route_on_every_listener_meets_one_on_a_single_listener() -> None:
    assert refused(route(section="http"), stored("a", route())) is not None
    assert refused(route(), stored("a", route(section="http"))) is not None


def test_the_gateway_namespace_defaults_to_the_deployments_own() -> None:
    spec = DeploymentSpec.model_validate(
        {"modelVersion": "v", "traffic": "GatewayAPI", "gateway": {"name": "gw"}}
    )
    a = desired_route("team-a", "iris", spec)
    b = desired_route("team-b", "iris", spec)
    assert (a.gateway_namespace, b.gateway_namespace) == ("team-a", "team-b")
    assert route_conflict("team-b", "iris", b, None, [stored("iris", a)]) is None


# -- who keeps it ------------------------------------------------------------------------------


def test_an_older_route_of_the_same_specificity_keeps_its_requests() -> None:
    # both routes hold "/" (written before routes had paths): the older one moves on freely,
    # the newer waits until the older has moved
    old = stored("old", route(), T0, namespace="team-b")
    new = stored("new", route(), T1, namespace="team-b")
    assert route_conflict("team-b", "old", route(path="/serving/team-b/old"), old, [new]) is None
    assert route_conflict("team-b", "new", route(path="/serving/team-b/new"), new, [old])
    moved = stored("old", route(path="/serving/team-b/old"), T0, namespace="team-b")
    assert route_conflict("team-b", "new", route(path="/serving/team-b/new"), new, [moved]) is None


def test_on_equal_timestamps_namespace_and_name_decide() -> None:
    a = stored("a", route(), T0, namespace="team-a")
    b = stored("b", route(), T0, namespace="team-b")
    assert route_conflict("team-a", "a", route(), a, [b]) is None
    assert route_conflict("team-b", "b", route(), b, [a]) is not None


def test_an_edit_cannot_take_what_anothers_route_already_has() -> None:
    # an older Deployment changing its hostname to a newer one's: the newer keeps it
    mine = stored("new", route("a.example.com"), T0, namespace="team-b")
    theirs = stored("b", route("b.example.com"), T1)
    message = refused(route("b.example.com"), theirs, own=mine)
    assert message is not None
    assert message.endswith("its HTTPRoute keeps hostnames a.example.com, pathPrefix / meanwhile")


def test_a_route_under_ones_own_prefix_is_still_its_owners() -> None:
    # team-a/o has /o under our "/": a gateway gives /o/... to the longer prefix, so /o/x is not
    # ours to take, however old our own route
    mine = stored("new", route("a.example.com"), T0, namespace="team-b")
    theirs = stored("o", route("a.example.com", path="/o"), T1)
    assert refused(route("a.example.com", path="/o/x"), theirs, own=mine) is not None


def test_the_deployments_own_route_is_never_in_its_way() -> None:
    mine = stored("new", route("a.example.com"), namespace="team-b")
    assert refused(route("a.example.com"), mine, own=mine) is None


def test_the_oldest_of_several_holders_is_named() -> None:
    newer = stored("newer", route("a.example.com", path="/x"), T1)
    older = stored("older", route("a.example.com"), T0)
    message = refused(route("a.example.com", path="/x"), newer, older)
    assert message is not None and "team-a/older" in message


# -- default paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route_spec", "path"),
    [
        (None, "/serving/team-a/iris"),
        ({"hostnames": ["iris.example.com"]}, "/"),
        ({"pathPrefix": "/models/iris"}, "/models/iris"),
        ({"hostnames": ["iris.example.com"], "pathPrefix": "/v1"}, "/v1"),
    ],
)
def test_the_default_path_is_the_root_with_hostnames_else_the_deployments_own(
    route_spec: dict[str, Any] | None, path: str
) -> None:
    spec: dict[str, Any] = {
        "modelVersion": "v",
        "traffic": "GatewayAPI",
        "gateway": {"name": "gw", "namespace": "infra", "sectionName": "http"},
    }
    if route_spec is not None:
        spec["route"] = route_spec
    wanted = desired_route("team-a", "iris", DeploymentSpec.model_validate(spec))
    assert wanted.path_prefix == path
    assert (wanted.gateway_namespace, wanted.gateway, wanted.section_name) == (
        "infra",
        "gw",
        "http",
    )


def test_default_paths_of_two_deployments_never_collide() -> None:
    a = stored("iris", route(path="/serving/team-a/iris"))
    assert refused(route(path="/serving/team-b/new"), a) is None
    assert refused(route(path="/serving/team-b/iris"), a) is None


def test_no_deployment_takes_a_path_under_another_namespaces_default_paths() -> None:
    # nobody holds it yet: still team-a's to take
    message = refused(route(path="/serving/team-a/iris"))
    assert message == (
        "spec.route.pathPrefix /serving/team-a/iris is under /serving/team-a, the default "
        "paths of namespace team-a's Deployments"
    )
    assert refused(route(path="/serving/team-b/anything/below")) is None
    assert refused(route(path="/serving/team-a")) is None  # shorter: takes nothing of theirs


# -- routes read back --------------------------------------------------------------------------


def test_a_stored_route_is_read_as_written_and_as_defaulted() -> None:
    body = {
        "metadata": {"namespace": "team-a", "name": "iris", "creationTimestamp": T0},
        "spec": {
            "parentRefs": [{"name": "shared", "namespace": "infra", "sectionName": "http"}],
            "hostnames": ["iris.example.com"],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v1/"}}]}],
        },
    }
    assert stored_route(body) == StoredRoute(
        "team-a", "iris", T0, Route("infra", "shared", "http", ("iris.example.com",), "/v1")
    )
    # written before routes had hostnames and paths: the API server's default match, PathPrefix /
    legacy = {
        "metadata": {"namespace": "team-a", "name": "old", "creationTimestamp": T0},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": []}]},
    }
    assert stored_route(legacy) == StoredRoute(
        "team-a", "old", T0, Route("team-a", "gw", None, (), "/")
    )
    assert stored_route({"metadata": {"name": "x"}, "spec": {}}) is None


# -- the condition -----------------------------------------------------------------------------


def test_a_refused_route_makes_ready_false_and_keeps_its_transition_time() -> None:
    conflict = route_conflict("team-b", "new", route(), None, [stored("a", route())])
    assert conflict is not None and conflict.holder == ("team-a", "a")
    earlier = datetime(2026, 12, 1, 9, tzinfo=UTC)
    before = set_condition([], "Ready", "False", ROUTE_CONFLICT, "old", 1, earlier)
    serving = set_condition([], "Degraded", "False", "AsExpected", "", 2, NOW)
    serving = set_condition(serving, "Ready", "True", "Serving", "v is serving", 2, NOW)
    decided = DeploymentStatus(conditions=serving)
    status = route_refused(decided, before, conflict, 2, NOW)
    assert [c.type for c in status.conditions] == ["Degraded", "Ready"]
    ready = status.conditions[1]
    assert (ready.status, ready.reason) == ("False", ROUTE_CONFLICT)
    assert ready.message == conflict.message
    assert ready.last_transition_time == "2026-12-01T09:00:00Z"
    assert ready.observed_generation == 2
    fresh = route_refused(decided, [], conflict, 2, NOW).conditions[1]
    assert fresh.last_transition_time == "2026-12-01T12:00:00Z"


# -- the operator's view of the routes (controller.cache.Routes) -------------------------------


def route_body(namespace: str, name: str, r: Route, created: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "parentRefs": [{"name": r.gateway, "namespace": r.gateway_namespace}],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": r.path_prefix}}]}],
    }
    if r.hostnames:
        spec["hostnames"] = list(r.hostnames)
    meta = {"namespace": namespace, "name": name, "creationTimestamp": created}
    return {"metadata": meta, "spec": spec}


def test_deployments_looking_at_once_are_never_both_admitted_onto_the_same_requests() -> None:
    # both waited for a route that went: the first to look holds the path from then on
    routes = Routes()
    wanted = route("a.example.com")
    assert routes.claim("team-a", "first", wanted, T1, keep=True) == (None, None)
    own, conflict = routes.claim("team-b", "second", wanted, T1, keep=True)
    assert own is None and conflict is not None and conflict.holder == ("team-a", "first")
    # the watch's copy replaces what was held, with the API server's timestamp
    routes.put(route_body("team-a", "first", wanted, T0))
    assert routes.get("team-a", "first") == stored("first", wanted, T0)


def test_a_deployment_with_nothing_to_route_yet_holds_nothing() -> None:
    routes = Routes()
    assert routes.claim("team-a", "pending", route(), T0, keep=False) == (None, None)
    assert routes.get("team-a", "pending") is None
    assert routes.claim("team-b", "serving", route(), T1, keep=True)[1] is None


def test_a_route_keeps_its_creation_time_when_its_deployment_moves_it() -> None:
    routes = Routes()
    routes.put(route_body("team-a", "iris", route(), T0))
    moved = route(path="/serving/team-a/iris")
    own, conflict = routes.claim("team-a", "iris", moved, T1, keep=True)
    assert own == stored("iris", route(), T0) and conflict is None
    assert routes.get("team-a", "iris") == stored("iris", moved, T0)


def test_refused_deployments_are_handed_back_once_when_the_route_in_their_way_changes() -> None:
    routes = Routes()
    routes.wait_for(("team-a", "iris"), ("team-b", "one"))
    routes.wait_for(("team-a", "iris"), ("team-b", "two"))
    assert routes.waiters("team-a", "iris") == {("team-b", "one"), ("team-b", "two")}
    assert routes.waiters("team-a", "iris") == set()


def test_routes_are_looked_up_on_their_gateway_and_forgotten_when_deleted() -> None:
    routes = Routes()
    routes.put(route_body("team-a", "iris", route(), T0))
    routes.put(route_body("team-a", "wine", route(gateway="other"), T0))
    assert routes.claim("team-b", "x", route(), T1, keep=False)[1] is not None
    routes.remove("team-a", "iris")
    assert routes.claim("team-b", "x", route(), T1, keep=False) == (None, None)
    routes.put({"metadata": {"name": "no-parent"}, "spec": {}})  # not one of ours: ignored
    assert routes.get("", "no-parent") is None
