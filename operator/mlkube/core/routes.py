"""Which requests a Deployment's HTTPRoute may take on a Gateway other teams share.

A gateway gives each request to one route among those on its listener that match it (Gateway
API, HTTPRouteSpec.hostnames and HTTPRouteRule.matches): the route with the most characters in
a matching non-wildcard hostname, then in a matching hostname (a route without hostnames
matches every host with none), then the longest matching PathPrefix, and on a full tie the
oldest route (creationTimestamp), then the first by `{namespace}/{name}`. `*.example.com`
matches any name ending in `.example.com`, not `example.com`; a PathPrefix matches whole path
elements (`/a` matches `/a` and `/a/b`, not `/ab`). `receiver` is that choice.

First come, first served: a Deployment's route is refused when some request another route
receives now would go to it instead, or tie with it (it would never answer). The routes
already stored keep what they receive; a Deployment whose route is unchanged is never refused,
and one moving its route may keep what its own route receives. So a shorter prefix beside an
older longer one is admitted (the longer keeps its paths), a route naming a host beside an
older one without hostnames is refused where the older receives that host's requests (a named
host outranks every path), and a wildcard beside an older exact name is admitted.

Default paths are `/serving/<namespace>/<name>` (KServe's path template), so two Deployments never
collide by default. They are the namespace's own: no route may have `/serving`, or a path at or
under another namespace's `/serving/<namespace>`, as its prefix, and requests under
`/serving/<namespace>` that another namespace's broader route receives (`/`, or a named host)
are not that route's to keep: the namespace's Deployments take them. Requests for a host no
route names always reach a namespace's default paths; a host another route names before them
goes to that route.

Pure: route bodies and specs in, decisions out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlkube.api.common import Condition, ConditionStatus
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


def _on_listener(route: Route, gateway: tuple[str, str], listener: str | None) -> bool:
    """Whether `route` attaches to the Gateway's listener `listener` (None: a listener no route
    names; a route without sectionName attaches to all the Gateway's listeners)."""
    return (route.gateway_namespace, route.gateway) == gateway and route.section_name in (
        None,
        listener,
    )


def _under(path: str, prefix: str) -> bool:
    return prefix in ("/", path) or path.startswith(prefix + "/")


ANY_HOST = ""
"""A request host no route names (only routes without hostnames match it)."""


def _host_rank(route: Route, host: str) -> tuple[int, int] | None:
    """Gateway API's hostname precedence of `route` for a request to `host`: (characters in a
    matching non-wildcard hostname, characters in a matching hostname); None if no hostname of
    it matches. `host` is a name, a wildcard standing for a name under it that no route names
    exactly, or ANY_HOST."""
    if not route.hostnames:
        return 0, 0
    best: tuple[int, int] | None = None
    for name in route.hostnames:
        if name.startswith("*."):
            # a wildcard host stands for a name under it: `*.s` is under `*.t` if `.s` ends in `.t`
            under = host[1:] if host.startswith("*.") else host
            matches = host != ANY_HOST and under.endswith(name[1:])
            rank = (0, len(name))
        else:
            matches = name == host
            rank = (len(name), len(name))
        if matches and (best is None or rank > best):
            best = rank
    return best


def _rank(route: Route, host: str, path: str) -> tuple[int, int, int] | None:
    """The precedence of `route` for the request (host, path), None if it does not match."""
    hosts = _host_rank(route, host)
    if hosts is None or not _under(path, route.path_prefix):
        return None
    return *hosts, len(route.path_prefix)


def _precedence(stored: StoredRoute) -> tuple[str, str]:
    return stored.created, f"{stored.namespace}/{stored.name}"


def receiver(routes: Iterable[StoredRoute], host: str, path: str) -> StoredRoute | None:
    """The route a gateway gives the request (host, path) to among `routes` on one listener
    (Gateway API precedence, above); None if none matches. `host` as in `_host_rank`."""
    best: tuple[tuple[int, int, int], StoredRoute] | None = None
    for stored in routes:
        rank = _rank(stored.route, host, path)
        if rank is None:
            continue
        if (
            best is None
            or rank > best[0]
            or (rank == best[0] and _precedence(stored) < _precedence(best[1]))
        ):
            best = rank, stored
    return None if best is None else best[1]


def _requests(wanted: Route, routes: list[Route]) -> list[tuple[str | None, str, str]]:
    """One request (listener, host, path) for every distinct way routes can compete for what
    `wanted` matches: each listener named (or none), each hostname (a wildcard standing for a
    name under it no route names) and a host none names, each prefix under `wanted`'s."""
    listeners: set[str | None] = (
        {wanted.section_name} if wanted.section_name is not None else {None}
    )
    if wanted.section_name is None:
        listeners |= {r.section_name for r in routes if r.section_name is not None}
    hosts = {ANY_HOST} | {h for r in (wanted, *routes) for h in r.hostnames}
    paths = {r.path_prefix for r in (wanted, *routes) if _under(r.path_prefix, wanted.path_prefix)}
    return [
        (listener, host, path)
        for listener in sorted(listeners, key=lambda s: s or "")
        for host in sorted(hosts)
        if _host_rank(wanted, host) is not None
        for path in sorted(paths)
    ]


def _reserved(path: str) -> str | None:
    """The namespace whose default paths `path` is at or under, if any."""
    elements = path.split("/")
    # ["", "serving", "<namespace>", ...]
    if len(elements) >= 3 and "/" + elements[1] == DEFAULT_PATH_ROOT:
        return elements[2]
    return None


def _describe(route: Route) -> str:
    hosts = ", ".join(route.hostnames) if route.hostnames else "any"
    return f"hostnames {hosts}, pathPrefix {route.path_prefix}"


def _foreign_default(namespace: str, prefix: str) -> str | None:
    """Why `prefix` is not `namespace`'s to have: it holds every namespace's default paths, or
    is at or under another's `/serving/<namespace>`."""
    if prefix == DEFAULT_PATH_ROOT:
        return (
            f"spec.route.pathPrefix {prefix} holds the default paths of every namespace's "
            f"Deployments ({DEFAULT_PATH_ROOT}/<namespace>/<name>)"
        )
    owner = _reserved(prefix)
    if owner is not None and owner != namespace:
        return (
            f"spec.route.pathPrefix {prefix} is under {DEFAULT_PATH_ROOT}/{owner}, the default "
            f"paths of namespace {owner}'s Deployments"
        )
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
    (those on other Gateways are skipped, and its own among them). Refused: `wanted` would
    receive, or tie for, a request another route receives now (`receiver`), unless that request
    is under `/serving/<namespace>` and the other is not in that namespace; or a prefix
    `_foreign_default` forbids. The oldest route in the way is named, with a request."""
    keeps = "" if own is None else f"; its HTTPRoute keeps {_describe(own.route)} meanwhile"
    foreign = _foreign_default(namespace, wanted.path_prefix)
    if foreign is not None:
        return Conflict(foreign + keeps, None)
    gateway = (wanted.gateway_namespace, wanted.gateway)
    stored = [o for o in others if o.key != (namespace, name)]
    if own is not None:
        stored.append(own)
    stored = [o for o in stored if (o.route.gateway_namespace, o.route.gateway) == gateway]
    taken: list[tuple[StoredRoute, str, str]] = []
    for listener, host, path in _requests(wanted, [o.route for o in stored]):
        holder = receiver(
            [o for o in stored if _on_listener(o.route, gateway, listener)], host, path
        )
        if holder is None or holder.key == (namespace, name):
            continue
        reserved = _reserved(path)
        if reserved is not None and reserved != holder.namespace and reserved == namespace:
            continue  # the namespace's own default paths
        theirs = _rank(holder.route, host, path)
        mine = _rank(wanted, host, path)
        if mine is not None and theirs is not None and mine >= theirs:
            taken.append((holder, host, path))
    if not taken:
        return None
    other, host, path = min(taken, key=lambda t: _precedence(t[0]))
    request = "any host" if host == ANY_HOST else host
    return Conflict(
        f"Deployment {other.namespace}/{other.name}'s HTTPRoute ({_describe(other.route)}) "
        f"on Gateway {wanted.gateway_namespace}/{wanted.gateway} receives requests for "
        f"{request}, path {path} that this Deployment's route ({_describe(wanted)}) would "
        f"take (Gateway API precedence: the most precise hostname, then the longest "
        f"pathPrefix, then the oldest route); choose spec.route.hostnames or "
        f"spec.route.pathPrefix apart from it{keeps}",
        other.key,
    )


def route_refused(
    status: DeploymentStatus,
    before: list[Condition],
    conflict: Conflict,
    generation: int | None,
    now: datetime,
) -> DeploymentStatus:
    """`status` with Ready False for the route conflict, and Degraded True with phase Degraded
    where the rollout itself was Healthy (a rollback's Degraded keeps its own reason); each
    condition's transition time is kept from `before` (the conditions the decision started
    from) while it stays so."""
    refused = status.model_copy(deep=True)
    types: list[tuple[str, ConditionStatus]] = [("Ready", "False")]
    if status.phase != "Degraded":
        types.append(("Degraded", "True"))
    for type_, value in types:
        kept = set_condition(
            before, type_, value, ROUTE_CONFLICT, conflict.message, generation, now
        )
        found = condition(kept, type_)
        assert found is not None, "set_condition always sets it"
        others = [c for c in refused.conditions if c.type != type_]
        if len(others) == len(refused.conditions):
            refused.conditions = [*others, found]
        else:
            refused.conditions = [found if c.type == type_ else c for c in refused.conditions]
    if status.phase == "Healthy":
        refused.phase = "Degraded"
    return refused
