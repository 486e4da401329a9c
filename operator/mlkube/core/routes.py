"""Which requests a Deployment's HTTPRoute may take on a Gateway other teams share.

A gateway gives each request to the most specific match among all routes on its listener
(Gateway API, HTTPRouteSpec.hostnames and HTTPRouteRule.matches): first the route with the most
characters in a matching non-wildcard hostname, then in a matching hostname, then the longest
PathPrefix, and only on a full tie the oldest route (creationTimestamp), then the first by
`{namespace}/{name}`. `*.example.com` matches any name ending in `.example.com`, not
`example.com`; a PathPrefix matches whole path elements (`/a` matches `/a` and `/a/b`, not
`/ab`).

So a route under another's path prefix takes that other's sub-paths whatever their ages. The
rule here: a Deployment's route is refused when its hostnames overlap another Deployment's
stored route's and its path prefix is that route's or under it (it would take those requests,
or tie for them and never answer). Hostnames overlap when a name of one is a name of the other
or falls under its wildcard, and when neither route names any: a route without hostnames claims
no name, so a route naming a host takes only that host's requests from it, as a gateway does.
Where two stored routes already tie (one prefix, overlapping hostnames: routes written before
routes had paths all hold `/`), the older one's Deployment may move within what it holds, as a
gateway gives the older those requests. A refused Deployment's HTTPRoute keeps what it was
admitted with.

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


def _names_overlap(a: str, b: str) -> bool:
    """Some host matches both hostnames."""
    if a.startswith("*.") and b.startswith("*."):
        return a.endswith(b[1:]) or b.endswith(a[1:])
    if a.startswith("*."):
        return b.endswith(a[1:])
    if b.startswith("*."):
        return a.endswith(b[1:])
    return a == b


def _shared_host(a: Route, b: Route) -> str | None:
    """A hostname the routes compete for, the more precise of an overlapping pair ("" when
    neither names a host); None when they compete for none."""
    if not a.hostnames or not b.hostnames:
        return "" if not a.hostnames and not b.hostnames else None
    for x in a.hostnames:
        for y in b.hostnames:
            if _names_overlap(x, y):
                return max(x, y, key=lambda h: (not h.startswith("*."), len(h)))
    return None


def _shadows(route: Route, other: Route) -> str | None:
    """The hostname `route` would take `other`'s requests on (or tie for them), None if none."""
    if not _same_listener(route, other) or not _under(route.path_prefix, other.path_prefix):
        return None
    return _shared_host(route, other)


def _precedence(stored: StoredRoute) -> tuple[str, str]:
    return stored.created, f"{stored.namespace}/{stored.name}"


def _holds(own: StoredRoute | None, other: StoredRoute) -> bool:
    """Both routes are stored with one prefix on overlapping hostnames and `own` is the older:
    a gateway gives it those requests, so its Deployment may move within them (routes written
    before routes had paths all held `/`)."""
    return (
        own is not None
        and own.route.path_prefix == other.route.path_prefix
        and _shadows(own.route, other.route) is not None
        and _precedence(own) < _precedence(other)
    )


def _describe(route: Route) -> str:
    hosts = ", ".join(route.hostnames) if route.hostnames else "any"
    return f"hostnames {hosts}, pathPrefix {route.path_prefix}"


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
    on `wanted`'s Gateway (its own among them is skipped). The oldest route in the way is named,
    with a hostname and the path they would share."""
    keeps = "" if own is None else f"; its HTTPRoute keeps {_describe(own.route)} meanwhile"
    foreign = _foreign_default(namespace, wanted.path_prefix)
    if foreign is not None:
        return Conflict(
            f"spec.route.pathPrefix {wanted.path_prefix} is under {DEFAULT_PATH_ROOT}/"
            f"{foreign}, the default paths of namespace {foreign}'s Deployments{keeps}",
            None,
        )
    for other in sorted(others, key=_precedence):
        if other.key == (namespace, name) or _holds(own, other):
            continue
        host = _shadows(wanted, other.route)
        if host is None:
            continue
        return Conflict(
            f"Deployment {other.namespace}/{other.name}'s HTTPRoute ({_describe(other.route)}) "
            f"on Gateway {wanted.gateway_namespace}/{wanted.gateway} receives requests for "
            f"{host or 'any host'}, path {wanted.path_prefix} that this "
            f"Deployment's route ({_describe(wanted)}) would match as well; choose "
            f"spec.route.hostnames or spec.route.pathPrefix apart from it{keeps}",
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
