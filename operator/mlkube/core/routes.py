"""Which requests a Deployment's HTTPRoute may take on a Gateway other teams share.

A gateway gives each request to the most specific match among all routes on its listener
(Gateway API, HTTPRouteSpec.hostnames and HTTPRouteRule.matches): first the route with the most
characters in a matching non-wildcard hostname, then in a matching hostname, then the longest
PathPrefix, and only on a full tie the oldest route (creationTimestamp), then the first by
`{namespace}/{name}`. A route without hostnames matches every host; `*.example.com` matches any
name ending in `.example.com`, not `example.com`; a PathPrefix matches whole path elements
(`/a` matches `/a` and `/a/b`, not `/ab`).

So a route with a longer prefix or a more precise hostname than another's takes that other's
requests whatever their ages. The rule here: a Deployment's route is refused when some request
another Deployment's stored route receives would be matched by it at least as specifically
(a steal, or a tie it would lose and so a route that never answers), unless the Deployment's own
stored route already receives that request (an older route of the same specificity, as a
gateway decides it). A refused Deployment's HTTPRoute keeps what it was admitted with.

Default paths are `/serving/<namespace>/<name>` (KServe's path template), so two Deployments never
collide by default, and no Deployment may take a path under another namespace's
`/serving/<namespace>`.

Pure: route bodies and specs in, decisions out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlkube.api.common import Condition
from mlkube.api.deployment import DeploymentSpec, DeploymentStatus
from mlkube.core.conditions import condition, set_condition

ROUTE_CONFLICT = "RouteConflict"
"""The Ready condition's reason while the spec's route is refused."""
DEFAULT_PATH_ROOT = "/serving"
Key = tuple[str, str]
"""(namespace, name) of a Deployment, and of its HTTPRoute (same name)."""
_FRESH = "~"
"""A host label no hostname has (RFC 1123: letters, digits, hyphens): a host only wildcards
and routes without hostnames match."""


@dataclass(frozen=True)
class Route:
    """What an HTTPRoute of ours matches: one parent, its hostnames, one PathPrefix."""

    gateway_namespace: str
    gateway: str
    section_name: str | None
    hostnames: tuple[str, ...]
    path_prefix: str


@dataclass(frozen=True)
class StoredRoute:
    """An HTTPRoute as the API server holds it."""

    namespace: str
    name: str
    created: str
    """metadata.creationTimestamp (RFC 3339 UTC, which sorts as text)."""
    route: Route

    @property
    def key(self) -> Key:
        return self.namespace, self.name


@dataclass(frozen=True)
class Conflict:
    message: str
    holder: Key | None
    """The Deployment whose route has the requests; None for another namespace's default
    paths."""


def default_path(namespace: str, name: str) -> str:
    return f"{DEFAULT_PATH_ROOT}/{namespace}/{name}"


def desired_route(namespace: str, name: str, spec: DeploymentSpec) -> Route:
    """The route the spec asks for (traffic GatewayAPI, so `gateway` is set); the parent's
    namespace defaults to the Deployment's, as an HTTPRoute parentRef's does."""
    assert spec.gateway is not None, "the schema requires gateway when traffic is GatewayAPI"
    hostnames = tuple(spec.route.hostnames) if spec.route else ()
    prefix = spec.route.path_prefix if spec.route else None
    if prefix is None:
        prefix = "/" if hostnames else default_path(namespace, name)
    return Route(
        gateway_namespace=spec.gateway.namespace or namespace,
        gateway=spec.gateway.name,
        section_name=spec.gateway.section_name,
        hostnames=hostnames,
        path_prefix=prefix,
    )


def stored_route(body: dict[str, Any]) -> StoredRoute | None:
    """An HTTPRoute the operator wrote (one parent, one rule, one PathPrefix match), read back;
    None without a parent. A rule without matches has the API server's default, PathPrefix `/`
    (routes written before hostnames and paths existed)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    parents = spec.get("parentRefs") or []
    if not parents or not meta.get("name"):
        return None
    namespace = str(meta.get("namespace") or "")
    parent = parents[0]
    rules = spec.get("rules") or [{}]
    matches = rules[0].get("matches") or [{}]
    prefix = str((matches[0].get("path") or {}).get("value") or "/")
    route = Route(
        gateway_namespace=str(parent.get("namespace") or namespace),
        gateway=str(parent.get("name") or ""),
        section_name=parent.get("sectionName"),
        hostnames=tuple(str(h) for h in spec.get("hostnames") or ()),
        path_prefix=prefix.rstrip("/") or "/",
    )
    return StoredRoute(
        namespace, str(meta["name"]), str(meta.get("creationTimestamp") or ""), route
    )


def _same_listener(a: Route, b: Route) -> bool:
    """Both attach to one Gateway, and to one listener of it (a route without sectionName
    attaches to all its listeners)."""
    return (a.gateway_namespace, a.gateway) == (b.gateway_namespace, b.gateway) and (
        a.section_name is None or b.section_name is None or a.section_name == b.section_name
    )


def _under(path: str, prefix: str) -> bool:
    return prefix in ("/", path) or path.startswith(prefix + "/")


def _host_matches(hostname: str, host: str) -> bool:
    return host.endswith(hostname[1:]) if hostname.startswith("*.") else hostname == host


def _rank(route: Route, host: str, path: str) -> tuple[int, int, int] | None:
    """How specifically `route` matches a request (higher wins), None when it does not:
    (characters of the matching non-wildcard hostname, of the matching hostname, of the
    PathPrefix)."""
    if not _under(path, route.path_prefix):
        return None
    if not route.hostnames:
        return 0, 0, len(route.path_prefix)
    keys = [
        (0 if hostname.startswith("*.") else len(hostname), len(hostname))
        for hostname in route.hostnames
        if _host_matches(hostname, host)
    ]
    return (*max(keys), len(route.path_prefix)) if keys else None


def _witness_hosts(*routes: Route) -> list[str]:
    """One host of each kind the routes tell apart: every exact hostname, a fresh name under
    each wildcard's suffix (which exactly the wildcards of that suffix or shorter match), and a
    host no hostname matches."""
    hosts = {_FRESH}
    for route in routes:
        for hostname in route.hostnames:
            hosts.add(_FRESH + hostname[1:] if hostname.startswith("*.") else hostname)
    return sorted(hosts)


def _precedence(stored: StoredRoute) -> tuple[str, str]:
    return stored.created, f"{stored.namespace}/{stored.name}"


def _taken(wanted: Route, own: StoredRoute | None, other: StoredRoute) -> tuple[str, str] | None:
    """A request (host, path) `other` receives now that `wanted` would match at least as
    specifically; None when there is none."""
    if not _same_listener(wanted, other.route):
        return None
    mine = own.route if own is not None and _same_listener(own.route, other.route) else None
    routes = [r for r in (wanted, other.route, mine) if r is not None]
    # the request paths the prefixes tell apart are the prefixes themselves
    paths = sorted({r.path_prefix for r in routes})
    for host in _witness_hosts(*routes):
        for path in paths:
            theirs = _rank(other.route, host, path)
            if theirs is None:
                continue
            ours = _rank(wanted, host, path)
            if ours is None or ours < theirs:
                continue
            if own is not None and mine is not None:
                held = _rank(mine, host, path)
                if held is not None and (
                    held > theirs or (held == theirs and _precedence(own) < _precedence(other))
                ):
                    continue  # our own route has it already
            return host, path
    return None


def _describe(route: Route) -> str:
    hosts = ", ".join(route.hostnames) if route.hostnames else "any"
    return f"hostnames {hosts}, pathPrefix {route.path_prefix}"


def _request(host: str, path: str) -> str:
    if host == _FRESH:
        return f"any host, path {path}"
    shown = "*" + host[len(_FRESH) :] if host.startswith(_FRESH) else host
    return f"{shown}, path {path}"


def _foreign_default(namespace: str, prefix: str) -> str | None:
    """The namespace whose default paths `prefix` reaches into, if not `namespace`'s own."""
    elements = prefix.split("/")
    # ["", "serving", "<namespace>", "<name>", ...]: only under a namespace's own element
    if len(elements) >= 4 and "/" + elements[1] == DEFAULT_PATH_ROOT and elements[2] != namespace:
        return elements[2]
    return None


def route_conflict(
    namespace: str,
    name: str,
    wanted: Route,
    own: StoredRoute | None,
    others: Iterable[StoredRoute],
) -> Conflict | None:
    """Why the Deployment `namespace/name` may not have `wanted` as its route (None: it may).

    `own` is its HTTPRoute as stored (None before there is one); `others` are the stored routes
    on `wanted`'s Gateway (its own among them is skipped). The oldest route that would lose
    requests is named, with the request."""
    keeps = "" if own is None else f"; its HTTPRoute keeps {_describe(own.route)} meanwhile"
    foreign = _foreign_default(namespace, wanted.path_prefix)
    if foreign is not None:
        return Conflict(
            f"spec.route.pathPrefix {wanted.path_prefix} is under {DEFAULT_PATH_ROOT}/"
            f"{foreign}, the default paths of namespace {foreign}'s Deployments{keeps}",
            None,
        )
    for other in sorted(others, key=_precedence):
        if other.key == (namespace, name):
            continue
        taken = _taken(wanted, own, other)
        if taken is None:
            continue
        return Conflict(
            f"Deployment {other.namespace}/{other.name}'s HTTPRoute ({_describe(other.route)}) "
            f"on Gateway {wanted.gateway_namespace}/{wanted.gateway} receives requests for "
            f"{_request(*taken)} that this Deployment's route ({_describe(wanted)}) matches "
            f"at least as specifically; choose spec.route.hostnames or spec.route.pathPrefix "
            f"apart from it{keeps}",
            other.key,
        )
    return None


def route_refused(
    status: DeploymentStatus,
    before: list[Condition],
    conflict: Conflict,
    generation: int | None,
    now: datetime,
) -> DeploymentStatus:
    """`status` with Ready False for the route conflict; the transition time is kept from
    `before` (the conditions the decision started from) while Ready stays False."""
    kept = set_condition(
        before, "Ready", "False", ROUTE_CONFLICT, conflict.message, generation, now
    )
    ready = condition(kept, "Ready")
    assert ready is not None, "set_condition always sets it"
    refused = status.model_copy(deep=True)
    others = [c for c in refused.conditions if c.type != "Ready"]
    if len(others) == len(refused.conditions):
        refused.conditions = [*others, ready]
    else:
        refused.conditions = [ready if c.type == "Ready" else c for c in refused.conditions]
    return refused
