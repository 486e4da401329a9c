"""Which requests a Deployment's HTTPRoute may take on a shared Gateway (issue 16, item 4).

First come, first served: a Deployment's route is refused when a request another stored route
receives would go to it instead, or tie with it, under Gateway API precedence (the most precise
hostname, then the longest PathPrefix, then the oldest route). What a route already receives it
keeps, however the routes after it look. `/serving/<namespace>` is the namespace's own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mlkube.api.deployment import DeploymentSpec, DeploymentStatus
from mlkube.controller.cache import Routes
from mlkube.core.conditions import set_condition
from mlkube.core.routes import (
    ANY_HOST,
    ROUTE_CONFLICT,
    Route,
    StoredRoute,
    desired_route,
    receiver,
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


def test_a_wildcard_beside_an_older_exact_hostname_takes_only_the_other_names() -> None:
    # a gateway leaves a.example.com to the exact name whichever came first
    assert refused(route("*.example.com"), stored("a", route("a.example.com"))) is None


def test_a_narrower_wildcard_under_an_older_one_is_refused_and_not_the_reverse() -> None:
    message = refused(route("*.eu.example.com"), stored("wild", route("*.example.com")))
    assert message is not None and "requests for *.eu.example.com" in message
    assert refused(route("*.example.com"), stored("eu", route("*.eu.example.com"))) is None
    assert refused(route("*.example.org"), stored("wild", route("*.example.com"))) is None


def test_a_wildcard_does_not_match_its_own_suffix() -> None:
    # *.example.com matches a.example.com, never example.com itself
    assert refused(route("example.com"), stored("wild", route("*.example.com"))) is None


def test_a_named_host_outranks_every_path_of_a_route_without_hostnames() -> None:
    message = refused(route(), stored("any", route()))
    assert message is not None and "requests for any host, path /" in message
    # a gateway gives a.example.com's requests to a route naming it, whatever their paths: an
    # older route without hostnames receives them, so a newer named one is refused over its paths
    message = refused(route("a.example.com"), stored("any", route(path="/models")))
    assert message is not None and "requests for a.example.com, path /models" in message
    assert refused(route("a.example.com", path="/v1"), stored("any", route(path="/models"))) is None
    # and the other way round the named host keeps its requests: the newer takes the others
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


def test_a_precise_hostname_outranks_a_longer_path() -> None:
    # the report: *.example.com /iris/v2 first, then a.example.com /iris would take
    # a.example.com/iris/v2 (hostname precedence comes before the path's length)
    held = stored("v2", route("*.example.com", path="/iris/v2"))
    message = refused(route("a.example.com", path="/iris"), held)
    assert message is not None and "requests for a.example.com, path /iris/v2" in message
    assert refused(route("a.example.org", path="/iris"), held) is None
    # a wildcard's longer path under an older exact name's root takes nothing of it
    exact = stored("a", route("a.example.com"))
    assert refused(route("*.example.com", path="/deep/path"), exact) is None
    assert refused(route("b.example.com", path="/deep/path"), exact) is None


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
    newer = stored("newer", route(path="/x"), T1)
    older = stored("older", route(), T0)
    message = refused(route("a.example.com"), newer, older)
    assert message is not None and "team-a/older" in message


def test_a_route_admitted_first_is_never_refused_by_a_later_one() -> None:
    # the report: long (m.example.com /iris/v2) first, then short (/iris) is admitted beside it
    # (the longer prefix keeps /iris/v2); long looking again keeps its route
    long = stored("long", route("m.example.com", path="/iris/v2"), T0)
    short = stored("short", route("m.example.com", path="/iris"), T1, namespace="team-b")
    assert refused(short.route, long) is None
    assert route_conflict("team-a", "long", long.route, long, [long, short]) is None


def test_a_broader_route_after_default_paths_takes_none_of_theirs_now_or_later() -> None:
    # the report: team-b's hostless "/" beside team-a's default paths; each keeps its route,
    # and one whose HTTPRoute was deleted gets it back (the namespace's own default path)
    catch_all = stored("all", route(), T1, namespace="team-b")
    iris = stored("iris", route(path="/serving/team-a/iris"), T0)
    wine = stored("wine", route(path="/serving/team-a/wine"), T0)
    assert route_conflict("team-b", "all", catch_all.route, None, [iris, wine]) is None
    assert route_conflict("team-a", "iris", iris.route, iris, [catch_all, wine]) is None
    assert route_conflict("team-a", "iris", iris.route, None, [catch_all, wine]) is None
    new = route(path="/serving/team-a/new")
    assert route_conflict("team-a", "new", new, None, [catch_all]) is None
    # the same with a named host before them: the default paths keep every other host
    named = stored("named", route("gw.example.com"), T0, namespace="team-b")
    assert route_conflict("team-a", "new", new, None, [named]) is None
    # but a path outside /serving stays the older route's
    assert refused(route(path="/models"), stored("all", route(), T0, namespace="team-c"))


def test_a_named_host_cannot_take_another_namespaces_default_paths() -> None:
    # the report: {"hostnames": ["gw.example.com"]} beside team-a's default route would take
    # gw.example.com/serving/team-a/iris (a named host outranks every path)
    iris = stored("iris", route(path="/serving/team-a/iris"))
    message = refused(route("gw.example.com"), iris)
    assert message is not None
    assert "requests for gw.example.com, path /serving/team-a/iris" in message
    assert refused(route("gw.example.com", path="/models"), iris) is None


def test_the_gateway_gives_each_request_to_the_most_precise_route() -> None:
    exact = stored("exact", route("a.example.com", path="/"), T1)
    wild = stored("wild", route("*.example.com", path="/iris/v2"), T0)
    bare = stored("bare", route(path="/iris/v2/deep"), T0)
    older = stored("older", route(path="/iris/v2/deep"), "2026-11-01T00:00:00Z")
    routes = [exact, wild, bare, older]
    assert receiver(routes, "a.example.com", "/iris/v2/deep") == exact  # host before path
    assert receiver(routes, "*.example.com", "/iris/v2/deep") == wild
    assert receiver(routes, "b.example.com", "/iris/v2") == wild  # a name under the wildcard
    assert receiver(routes, "*.example.com", "/iris") is None
    assert receiver(routes, ANY_HOST, "/iris/v2/deep") == older  # a tie: the oldest
    assert receiver(routes, "example.com", "/iris/v2/deep") == older  # not under *.example.com


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


def test_no_deployment_takes_a_path_at_or_under_another_namespaces_default_paths() -> None:
    # nobody holds it yet: still team-a's to take
    message = refused(route(path="/serving/team-a/iris"))
    assert message == (
        "spec.route.pathPrefix /serving/team-a/iris is under /serving/team-a, the default "
        "paths of namespace team-a's Deployments"
    )
    # the report: /serving/team-a from team-b would take team-a's later default paths
    assert refused(route(path="/serving/team-a")) is not None
    assert refused(route("a.example.com", path="/serving/team-a")) is not None
    message = refused(route(path="/serving"))
    assert message is not None and "default paths of every namespace's" in message
    assert refused(route(path="/serving/team-b/anything/below")) is None
    assert refused(route(path="/serving/team-b")) is None


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
    decided = DeploymentStatus(conditions=serving, phase="Healthy")
    status = route_refused(decided, before, conflict, 2, NOW)
    assert [c.type for c in status.conditions] == ["Degraded", "Ready"]
    degraded, ready = status.conditions
    assert (ready.status, ready.reason) == ("False", ROUTE_CONFLICT)
    assert ready.message == conflict.message
    assert ready.last_transition_time == "2026-12-01T09:00:00Z"
    assert ready.observed_generation == 2
    fresh = route_refused(decided, [], conflict, 2, NOW).conditions[1]
    assert fresh.last_transition_time == "2026-12-01T12:00:00Z"
    # `kubectl get` and `mlkube status` show it: the phase says Degraded, and why
    assert status.phase == "Degraded"
    assert (degraded.status, degraded.reason) == ("True", ROUTE_CONFLICT)
    assert degraded.message == conflict.message


def test_a_refused_route_leaves_a_rollouts_own_phase_and_a_rollbacks_reason() -> None:
    conflict = route_conflict("team-b", "new", route(), None, [stored("a", route())])
    assert conflict is not None
    rolling = DeploymentStatus(phase="Progressing")
    assert route_refused(rolling, [], conflict, 1, NOW).phase == "Progressing"
    rolled_back = set_condition([], "Degraded", "True", "RolledBack", "v2 failed", 1, NOW)
    degraded = DeploymentStatus(phase="Degraded", conditions=rolled_back)
    status = route_refused(degraded, [], conflict, 1, NOW)
    assert [(c.type, c.reason) for c in status.conditions] == [
        ("Degraded", "RolledBack"),
        ("Ready", ROUTE_CONFLICT),
    ]


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
