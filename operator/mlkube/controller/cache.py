"""Watch-fed caches: what the operator knows about its objects and their children without asking.

kopf's watch streams feed every event in (`Store.observe`); reconciles read from here, so a burst of
1,000 objects costs O(1) API reads each instead of a list of the whole namespace per reconcile.
Writes go through to the store with the API server's answer (`Store.put`), and an older
resourceVersion never replaces a newer one, so a reconcile always sees at least its own writes.

Children are kept slim (metadata, status and the top-level scalar spec fields such as `suspend`
and `replicas`; no pod templates): 1,000 Jobs cost a few MB, not a hundred.

A watch that expired (410 Gone, an API server restart) is followed by a new list, and a list
reports no deletions: kopf hands its objects on one by one, so an object deleted meanwhile would
stay here for ever. The operator then lists the namespace itself and `Store.replace`s it, as
client-go's Reflector replaces its store on a re-list: whatever the list lacks and is not newer
than the list is gone, and is reported so (its owner looks again).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable

from mlkube.api.common import Body
from mlkube.core.routes import Conflict, Key, Route, StoredRoute, route_conflict, stored_route

_KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
)


def slim(body: Body) -> Body:
    """A child's body without what no decision reads (pod templates, managedFields)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in _KEPT_METADATA if k in meta},
        "spec": {k: v for k, v in spec.items() if not isinstance(v, dict | list)},
        "status": body.get("status") or {},
    }


def without_managed_fields(body: Body) -> Body:
    meta = body.get("metadata") or {}
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def _version(body: Body) -> int:
    value = str((body.get("metadata") or {}).get("resourceVersion") or "0")
    return int(value) if value.isdigit() else 0


class Store:
    """Bodies of one kind by namespace and name, with an index on a few labels."""

    def __init__(self, slim_bodies: bool = False, index: Iterable[str] = ()) -> None:
        self._slim = slim_bodies
        self._index_keys = tuple(index)
        self._items: dict[str, dict[str, Body]] = defaultdict(dict)
        self._by_label: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self._lock = threading.Lock()
        self.synced = threading.Event()
        """Set once the watch has listed everything (kopf's resume pass or first events)."""
        self._deleted: dict[str, dict[str, int]] = {}
        """Namespaces being re-listed: the resourceVersion each deletion seen meanwhile had, so
        the list (older than the deletion) never brings a deleted object back."""

    def put(self, body: Body) -> Body:
        """Keep `body` unless a newer version is already here; returns what is kept."""
        kept = slim(body) if self._slim else without_managed_fields(body)
        with self._lock:
            return self._put(kept)

    def _put(self, kept: Body) -> Body:
        meta = kept["metadata"]
        namespace, name = meta.get("namespace") or "", meta["name"]
        old = self._items[namespace].get(name)
        if old is not None and _version(old) > _version(kept) > 0:
            return old
        if old is not None:
            self._unindex(namespace, name, old)
        self._items[namespace][name] = kept
        for label in self._index_keys:
            value = (meta.get("labels") or {}).get(label)
            if value is not None:
                self._by_label[(namespace, label, value)].add(name)
        return kept

    def relisting(self, namespace: str) -> None:
        """A list of `namespace` is about to be sent: deletions seen from now on are remembered
        until `replace` applies it."""
        with self._lock:
            self._deleted.setdefault(namespace, {})

    def replace(self, namespace: str, items: list[Body], version: str) -> list[Body]:
        """A fresh list of `namespace` (as of resourceVersion `version`; `relisting` was called
        before it was sent) replaces what is kept: listed objects are put (a newer one kept stays),
        and a kept object the list lacks is removed unless it is newer than the list (created
        since) or was only just made here (resourceVersion 0: not yet seen by any watch).
        Returns the bodies removed: each is a deletion the watch never reported."""
        listed = int(version) if version.isdigit() else 0
        with self._lock:
            deleted = self._deleted.pop(namespace, {})
            names = set()
            for body in items:
                kept = slim(body) if self._slim else without_managed_fields(body)
                name = kept["metadata"]["name"]
                names.add(name)
                if deleted.get(name, -1) < _version(kept):  # not deleted since the list
                    self._put(kept)
            gone = [
                body
                for name, body in self._items[namespace].items()
                if name not in names and 0 < _version(body) <= listed
            ]
            for body in gone:
                name = body["metadata"]["name"]
                del self._items[namespace][name]
                self._unindex(namespace, name, body)
        return gone

    def namespaces(self) -> list[str]:
        """Namespaces with an object kept here."""
        with self._lock:
            return [namespace for namespace, items in self._items.items() if items]

    def names(self, namespace: str) -> list[str]:
        with self._lock:
            return list(self._items[namespace])

    def _unindex(self, namespace: str, name: str, body: Body) -> None:
        for label in self._index_keys:
            value = (body["metadata"].get("labels") or {}).get(label)
            if value is not None:
                self._by_label[(namespace, label, value)].discard(name)

    def remove(self, namespace: str, name: str, version: int = 0) -> None:
        with self._lock:
            old = self._items[namespace].pop(name, None)
            if old is not None:
                self._unindex(namespace, name, old)
            if namespace in self._deleted:
                self._deleted[namespace][name] = max(version, _version(old or {}))

    def observe(self, event_type: str | None, body: Body) -> Body | None:
        """One watch event; returns the body kept (None once deleted)."""
        meta = body.get("metadata") or {}
        if event_type == "DELETED":
            self.remove(meta.get("namespace") or "", meta["name"], _version(body))
            return None
        return self.put(body)

    def get(self, namespace: str, name: str) -> Body | None:
        with self._lock:
            return self._items[namespace].get(name)

    def list(self, namespace: str, labels: dict[str, str] | None = None) -> list[Body]:
        """Objects in `namespace` carrying every label in `labels` (indexed labels are O(1))."""
        wanted = labels or {}
        with self._lock:
            items = self._items[namespace]
            indexed = [(k, v) for k, v in wanted.items() if k in self._index_keys]
            if indexed:
                names = set.intersection(
                    *(self._by_label.get((namespace, k, v), set()) for k, v in indexed)
                )
                candidates = [items[n] for n in names if n in items]
            else:
                candidates = list(items.values())
        return [
            b
            for b in candidates
            if all((b["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]


class Routes:
    """The HTTPRoutes the operator wrote, as `core.routes` reads them, by the Gateway they
    attach to (a route's conflicts are looked up among its Gateway's routes only), and the
    Deployments refused because of each: they look again when it changes or goes.

    A route admitted is kept here at once, before it is written (`claim`): Deployments that
    look at the same moment (all those waiting for a route that just went) see it, so no two
    are admitted onto the same requests. The watch's copy replaces it when it comes."""

    def __init__(self) -> None:
        self._routes: dict[Key, StoredRoute] = {}
        self._by_gateway: dict[Key, set[Key]] = defaultdict(set)
        self._waiting: dict[Key, set[Key]] = defaultdict(set)
        self._lock = threading.Lock()

    def put(self, body: Body) -> None:
        found = stored_route(body)
        if found is not None:
            with self._lock:
                self._keep(found)

    def _keep(self, stored: StoredRoute) -> None:
        self._drop(stored.key)
        self._routes[stored.key] = stored
        self._by_gateway[(stored.route.gateway_namespace, stored.route.gateway)].add(stored.key)

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            self._drop((namespace, name))

    def _drop(self, key: Key) -> None:
        old = self._routes.pop(key, None)
        if old is not None:
            self._by_gateway[(old.route.gateway_namespace, old.route.gateway)].discard(key)

    def get(self, namespace: str, name: str) -> StoredRoute | None:
        with self._lock:
            return self._routes.get((namespace, name))

    def claim(
        self, namespace: str, name: str, wanted: Route, now: str, keep: bool
    ) -> tuple[StoredRoute | None, Conflict | None]:
        """The Deployment's stored route and why `wanted` is refused (`core.routes`), judged
        against the routes on its Gateway; admitted with `keep` (it is about to be written),
        it is kept at once, as created `now` unless the Deployment's route exists already."""
        with self._lock:
            own = self._routes.get((namespace, name))
            gateway = (wanted.gateway_namespace, wanted.gateway)
            others = [self._routes[k] for k in self._by_gateway.get(gateway, ())]
            conflict = route_conflict(namespace, name, wanted, own, others)
            if conflict is None and keep:
                created = now if own is None else own.created
                self._keep(StoredRoute(namespace, name, created, wanted))
            return own, conflict

    def wait_for(self, holder: Key, waiter: Key) -> None:
        """`waiter` was refused because of `holder`'s route."""
        with self._lock:
            self._waiting[holder].add(waiter)

    def waiters(self, namespace: str, name: str) -> set[Key]:
        """The Deployments waiting for this route to change, forgotten here (a look that
        refuses them again records them again)."""
        with self._lock:
            return self._waiting.pop((namespace, name), set())
