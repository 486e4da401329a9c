"""kopf wiring, nothing else. Run with `kopf run --all-namespaces -m mlkube.controller.main`
(the operator image's command).

Every watch event feeds the caches and puts a key in the work queue: our kinds enqueue
themselves when their spec, annotations or deletion changed (not on our own status writes); every
kind of child the operator writes (CHILDREN, selected server-side by `managed-by=mlkube`) enqueues
the object that owns it when one changes or goes, as controller-runtime's `Owns()` does, and a
periodic resync (MLKUBE_RESYNC_SECONDS, default 600, jittered) looks at every object again, as
its SyncPeriod does. Only `on.event` handlers are used, so kopf writes nothing onto any object
(no progress or diff-base annotations, no finalizers), and kopf's own retries never run: the work
queue is the one place that retries.

kopf re-lists a kind after its watch expired (410 Gone, an API server restart) and a list reports
no deletions; a listed object the caches already hold says that happened, and the namespace's
caches are then replaced by lists of the operator's own (`cache.Store.replace`), so an object
deleted meanwhile is reported gone.

Kinds are always selected by group, so `deployments.mlkube.io` is never confused with apps/v1.

With `MLKUBE_LEADER_ELECTION_LEASE` (the chart sets it) every replica watches and fills its caches,
but only the one holding the Lease runs the work queue; one that loses the Lease exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any, cast

import kopf

from mlkube.api.common import API_VERSION, GROUP, VERSION, Body
from mlkube.api.crdgen import KINDS
from mlkube.api.deployment import DeploymentStatus
from mlkube.builders.common import MANAGED_BY, owner_of
from mlkube.config import OperatorConfig
from mlkube.controller import metrics
from mlkube.controller.batchprediction import BatchPredictionReconciler
from mlkube.controller.cache import Routes, Store
from mlkube.controller.context import Context
from mlkube.controller.deployment import DeploymentReconciler, routes_through_gateway
from mlkube.controller.driftmonitor import DriftMonitorReconciler
from mlkube.controller.errors import ApiError, Temporary
from mlkube.controller.events import EventRecorder
from mlkube.controller.kube import Cluster
from mlkube.controller.leader import Elector
from mlkube.controller.metrics_auth import MetricsAuth, serve_metrics
from mlkube.controller.modelversion import ModelVersionReconciler
from mlkube.controller.queue import Key, WorkQueue
from mlkube.controller.reconciler import AsReconciler
from mlkube.controller.trainingjob import TrainingJobReconciler
from mlkube.core.history import serving_versions

METRICS_PORT = int(os.environ.get("MLKUBE_METRICS_PORT", "8080"))
METRICS_SECURE = os.environ.get("MLKUBE_METRICS_SECURE", "true").lower() != "false"
"""/metrics only for tokens allowed to get it (`metrics_auth`); the chart's metrics.secure."""
MANAGED = dict(MANAGED_BY)
MANAGED_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED.items())
CHILD_EVENT_DELAY = 1.0
"""Seconds a child's event waits before its owner looks: a burst of them (created, scheduled,
ready) is one reconcile, and new objects in a burst get their first child first."""
NAMESPACE_SCANNING = os.environ.get("MLKUBE_NAMESPACE_SCANNING", "true").lower() != "false"
"""Whether kopf lists and watches namespaces (and CRDs) to follow what appears. The chart turns
it off for a namespaced install (watchNamespaces of plain names): that operator may not list
namespaces, and kopf would retry the refused list for about a minute before serving the names
given."""
RESYNC_SECONDS = float(os.environ.get("MLKUBE_RESYNC_SECONDS", "600"))
"""Every object is looked at again this often (0: never), whatever its events said."""
RESYNC_JITTER = 0.1
"""The period varies by this share, and each pass spreads its keys over this share of it, so
1,000 objects are not one burst."""
RELIST_QUIET = 2.0
"""Seconds without a listed object before the operator lists a namespace itself (kopf's list is
over by then)."""


@dataclass(frozen=True)
class Child:
    """A kind of object the operator writes for its own kinds."""

    api_version: str
    kind: str
    plural: str
    cache: str | None = None
    """The `Caches` field it feeds (reconcilers read it); None: a store of its own, kept only to
    notice deletions after a re-list."""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


CHILDREN = (
    Child("batch/v1", "Job", "jobs", cache="jobs"),
    Child("apps/v1", "Deployment", "deployments", cache="servers"),
    Child("v1", "Service", "services"),
    Child("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    Child("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    Child("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
    Child("batch/v1", "CronJob", "cronjobs"),
)
"""Every kind of child, watched: one that changes or goes puts its owner (`owner_of`: its
controller reference, or a drift Job's label) in the queue. A new kind's children are covered
once its reconciler is registered; a new kind of child is one line here (and list/watch in the
chart's RBAC)."""
RELEASE_WAIT = 10.0
"""Seconds a stopping leader waits for running reconciles before handing its Lease over."""
logger = logging.getLogger("mlkube.operator")


class Operator:
    """The process-wide pieces, made at start-up."""

    def __init__(self) -> None:
        workers = int(os.environ.get("MLKUBE_WORKERS", "16"))
        # a quarter of the workers at most scrape one namespace's pods: a tenant whose pods answer
        # slowly (each scrape up to its timeout) never holds the workers other namespaces need
        self.queue = WorkQueue(
            self.reconcile, workers=workers, lane=self.scraping, lane_limit=max(1, workers // 4)
        )
        kube = Cluster()
        config = OperatorConfig.from_env()
        self.events = EventRecorder(kube.post_event)
        self.ctx = Context(kube, config, post_event=self.events.record, enqueue=self.queue.add)
        self.routes = Routes()
        self.elector = (
            None
            if config.leader_election_lease is None
            else Elector(kube, config.leader_election_lease, identity())
        )
        self.reconcilers: dict[str, Callable[[str, str], float | None]] = {
            "TrainingJob": AsReconciler(self.ctx, TrainingJobReconciler(self.ctx)),
            "ModelVersion": AsReconciler(self.ctx, ModelVersionReconciler(self.ctx)),
            "Deployment": AsReconciler(self.ctx, DeploymentReconciler(self.ctx, self.routes)),
            "DriftMonitor": AsReconciler(self.ctx, DriftMonitorReconciler(self.ctx)),
            "BatchPrediction": AsReconciler(self.ctx, BatchPredictionReconciler(self.ctx)),
        }
        self.seen: dict[Key, tuple[Any, ...]] = {}
        self.primed: set[Key] = set()
        """Objects first cached by `prime`: their first event is no sign of a re-list."""
        self.children: dict[tuple[str, str], Store] = {
            (child.api_version, child.kind): (
                getattr(self.ctx.caches, child.cache) if child.cache else Store(slim_bodies=True)
            )
            for child in CHILDREN
        }
        self._listed: dict[str, float] = {}
        """When kopf last listed an object of each namespace that the caches held already."""
        self._relists: dict[str, asyncio.Task[None]] = {}
        self.task: asyncio.Task[None] | None = None
        self.resyncing: asyncio.Task[None] | None = None
        self.metrics_server: ThreadingHTTPServer | None = None

    def reconcile(self, key: Key) -> float | None:
        kind, namespace, name = key
        return self.reconcilers[kind](namespace, name)

    def scraping(self, key: Key) -> str | None:
        """The queue's lane of a Deployment whose reconcile scrapes its pods (it has a canary)."""
        kind, namespace, name = key
        body = self.ctx.caches.objects[kind].get(namespace, name) if kind == "Deployment" else None
        canary = ((body or {}).get("status") or {}).get("canaryVersion")
        return f"scrape/{namespace}" if canary else None

    async def run(self) -> None:
        """The work queue, while this replica leads (always, without an election)."""
        if self.elector is None:
            await self.queue.serve()
            return
        if not await asyncio.to_thread(self.elector.acquire):
            return  # stopped while standing by
        serving = asyncio.create_task(self.queue.serve())
        try:
            await asyncio.to_thread(self.elector.hold)
        finally:
            serving.cancel()
        if not self.elector.stopping.is_set():
            # another replica may reconcile already: no reconcile of ours may go on, not even
            # one running now, so the process ends here and the kubelet starts it afresh
            logger.critical("lost the Lease: exiting")
            os._exit(1)

    async def hand_over(self) -> None:
        """After `run` was stopped: a leader whose reconciles all ended releases its Lease, so
        a standby takes over at its next look instead of once the Lease expires."""
        if self.elector is not None and await asyncio.to_thread(self.queue.idle, RELEASE_WAIT):
            await asyncio.to_thread(self.elector.release)

    def prime(self, kind: str, body: Body) -> None:
        """Cache an object kopf lists before any other handler runs (see `_watch_kind`)."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace") or "", meta["name"]
        store = self.ctx.caches.objects[kind]
        if store.get(namespace, name) is None:
            self.primed.add((kind, namespace, name))
            store.put(body)

    def object_event(self, kind: str, event_type: str | None, body: Body) -> None:
        """Cache the object; enqueue it unless only its status moved (our own write). A deleted
        one is enqueued too: its reconciler tells whoever depended on it."""
        meta = body.get("metadata") or {}
        key = (kind, meta.get("namespace") or "", meta["name"])
        store = self.ctx.caches.objects[kind]
        primed = key in self.primed
        self.primed.discard(key)
        if event_type is None and not primed and store.get(key[1], key[2]) is not None:
            self.listed(key[1])
        kept = store.observe(event_type, body)
        if kept is None:
            self.seen.pop(key, None)
            metrics.forget(*key)
            self.queue.add(key)
            if kind == "Deployment":  # the versions it served take it off their record
                status = DeploymentStatus.model_validate(body.get("status") or {})
                for version in serving_versions(status):
                    self.queue.add(("ModelVersion", key[1], version))
            return
        fingerprint = (
            meta.get("generation"),
            tuple(sorted((meta.get("annotations") or {}).items())),
            meta.get("deletionTimestamp"),
        )
        if self.seen.get(key) != fingerprint:
            self.seen[key] = fingerprint
            self.queue.add(key)

    def child_event(self, event_type: str | None, body: Body) -> None:
        """A child changed or went: cached, applied again at its owner's next look if it went or
        was edited (`Context.child_changed`), and its owner takes that look."""
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace") or ""
        store = self.children[(body.get("apiVersion", ""), body.get("kind", ""))]
        if event_type is None and store.get(namespace, meta["name"]) is not None:
            self.listed(namespace)
        store.observe(event_type, body)
        self.ctx.child_changed(body, deleted=event_type == "DELETED")
        owner = owner_of(body)
        if owner is not None and owner[0] in self.reconcilers:
            self.queue.add((owner[0], namespace, owner[1]), CHILD_EVENT_DELAY)

    # -- caches that re-list correctly, and the resync ------------------------------------------

    def listed(self, namespace: str) -> None:
        """kopf is listing again an object the caches hold (its watch expired): once its list
        is over, the namespace's caches are replaced by lists of our own."""
        self._listed[namespace] = time.monotonic()
        if namespace not in self._relists:
            self._relists[namespace] = asyncio.get_running_loop().create_task(
                self._relist(namespace)
            )

    async def _relist(self, namespace: str) -> None:
        try:
            done = 0.0
            while self._listed[namespace] > done:
                while (quiet := self._listed[namespace] + RELIST_QUIET - time.monotonic()) > 0:
                    await asyncio.sleep(quiet)
                done = time.monotonic()
                for kind in KINDS:
                    store = self.ctx.caches.objects[kind.kind]
                    gone = await self._replace(store, API_VERSION, kind.kind, "", namespace)
                    for body in gone:
                        self.object_event(kind.kind, "DELETED", body)
                for child in CHILDREN:
                    store = self.children[(child.api_version, child.kind)]
                    selector = MANAGED_SELECTOR
                    gone = await self._replace(
                        store, child.api_version, child.kind, selector, namespace
                    )
                    for body in gone:
                        self.child_event("DELETED", body)
        finally:
            del self._relists[namespace]

    async def _replace(
        self, store: Store, api_version: str, kind: str, selector: str, namespace: str
    ) -> list[Body]:
        """`store`'s objects of `namespace` replaced by a fresh list; returns those gone. A
        temporary failure (the API server is still coming back) is retried with backoff; a
        terminal one (the kind is not served: no Gateway API) leaves the store as it is."""
        for attempt in range(8):
            store.relisting(namespace)
            try:
                items, version = await asyncio.to_thread(
                    self.relist, api_version, kind, selector, namespace
                )
            except Temporary as e:
                logger.info("re-listing %s in %s: %s", kind, namespace, e)
                await asyncio.sleep(min(2.0**attempt, 30.0))
                continue
            except ApiError as e:
                logger.info("not re-listing %s in %s: %s", kind, namespace, e)
                break
            # a list's items carry no apiVersion and kind: the watch's events do
            typed = [{**item, "apiVersion": api_version, "kind": kind} for item in items]
            gone = store.replace(namespace, typed, version)
            if gone:
                logger.info(
                    "%s %s in %s deleted while the watch was down",
                    len(gone), kind, namespace,
                )  # fmt: skip
            return gone
        store.replace(namespace, [], "")  # remember no more deletions for a list never made
        return []

    def relist(
        self, api_version: str, kind: str, selector: str, namespace: str
    ) -> tuple[list[Body], str]:
        """What kopf watches of one kind in one namespace, listed (the watch's own right)."""
        return self.ctx.kube.list_at(api_version, kind, namespace, selector)

    async def resync(self) -> None:
        """Every RESYNC_SECONDS (jittered) every object is put in the queue again, spread over
        a tenth of the period, as controller-runtime's SyncPeriod: what no event tells (a quota
        lifted, a Service edited by hand) is put right within one period."""
        while RESYNC_SECONDS > 0:
            await asyncio.sleep(
                RESYNC_SECONDS * random.uniform(1 - RESYNC_JITTER, 1 + RESYNC_JITTER)
            )
            spread = RESYNC_SECONDS * RESYNC_JITTER
            for kind, store in self.ctx.caches.objects.items():
                for namespace in store.namespaces():
                    for name in store.names(namespace):
                        self.queue.add((kind, namespace, name), random.uniform(0, spread))


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf compares an object with its last handled state only for on.create/on.update/
    on.field handlers; with on.event alone that comparison is never read, so none is built
    (building one deep-copies every body of every event: a tenth of the operator's CPU in a
    burst) and none is stored."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


_operator: Operator | None = None


def identity() -> str:
    """The pod's name (the chart sets POD_ID, as kopf reads it), else this host's."""
    return os.environ.get("POD_ID") or socket.gethostname()


def operator() -> Operator:
    assert _operator is not None, "made by the startup handler, before any watch event"
    return _operator


def tune(settings: kopf.OperatorSettings, scanning: bool) -> None:
    """kopf's settings: watch streams that cannot hang, no per-event noise; `scanning` False
    serves exactly the namespaces named with --namespace and the CRDs present at start."""
    settings.scanning.disabled = not scanning
    settings.persistence.finalizer = "mlkube.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="mlkube.io", v1=False
    )
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    # per-object workers only cache and enqueue; idle ones exit soon, so a burst of objects does
    # not keep thousands of them (and their queues) alive
    settings.queueing.idle_timeout = 0.5
    settings.posting.level = logging.WARNING
    # a line per watch event is noise at 1,000 objects; our own loggers say what matters
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    for child in CHILDREN:  # only the operator's children, filtered by the API server
        settings.watching.label_selectors[child.group, child.version, child.plural] = (
            MANAGED_SELECTOR
        )


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf tuned; the work queue started."""
    tune(settings, NAMESPACE_SCANNING)
    global _operator  # noqa: PLW0603 - one per run: a restarted operator starts afresh
    _operator = Operator()
    if METRICS_PORT:
        auth = MetricsAuth(_operator.ctx.kube) if METRICS_SECURE else None
        _operator.metrics_server = serve_metrics(METRICS_PORT, auth)
    _operator.task = asyncio.create_task(_operator.run())
    _operator.resyncing = asyncio.create_task(_operator.resync())


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    op = operator()
    if op.elector is not None:
        op.elector.stop()
    for task in (op.task, op.resyncing, *op._relists.values()):
        if task is not None:
            task.cancel()
    if op.metrics_server is not None:
        await asyncio.to_thread(op.metrics_server.shutdown)  # waits out one poll interval
        op.metrics_server.server_close()
    await asyncio.to_thread(op.events.flush)
    await op.hand_over()


def _watch_kind(kind: str, plural: str) -> None:
    @kopf.index(GROUP, VERSION, plural, id=f"{kind.lower()}-known")
    async def known(body: kopf.Body, **_: Any) -> None:
        """Being a kopf index, kopf holds every other handler until all existing objects of
        every kind are cached: no reconcile after a (re)start reads a partial cache, where a
        Deployment would take a version not listed yet for deleted, or an older one for its
        latest approved (nothing goes into kopf's own index)."""
        operator().prime(kind, cast(Body, dict(body)))

    @kopf.on.event(GROUP, VERSION, plural, id=f"{kind.lower()}-changed")
    async def changed(event: kopf.RawEvent, **_: Any) -> None:
        operator().object_event(kind, event.get("type"), cast(Body, event["object"]))


for _kind in KINDS:
    _watch_kind(_kind.kind, _kind.plural)


def _watch_child(child: Child) -> None:
    @kopf.on.event(
        child.group, child.version, child.plural, labels=MANAGED, id=f"{child.plural}-changed"
    )
    async def changed(event: kopf.RawEvent, **_: Any) -> None:
        operator().child_event(event.get("type"), cast(Body, event["object"]))


for _child in CHILDREN:
    _watch_child(_child)


@kopf.index("gateway.networking.k8s.io", "v1", "httproutes", labels=MANAGED)
async def route_stored(body: kopf.Body, **_: Any) -> None:
    """Keep the route as `core.routes` reads it (nothing goes into kopf's own index). Being a
    kopf index, kopf holds every other handler until all existing routes have been through
    here, so no Deployment is reconciled, and admitted on its gateway, before the operator
    knows the routes already there."""
    operator().routes.put(cast(Body, dict(body)))


@kopf.on.event("gateway.networking.k8s.io", "v1", "httproutes", labels=MANAGED)
async def route_changed(event: kopf.RawEvent, **_: Any) -> None:
    """A route changed or went: the Deployments refused because of it look again. A route
    deleted while its Deployment still routes through a gateway keeps what it held (first come,
    first served): its Deployment, enqueued as its owner, writes it again."""
    op, body = operator(), cast(Body, event["object"])
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta["name"]
    if event.get("type") == "DELETED" and not routes_through_gateway(op.ctx, namespace, name):
        op.routes.remove(namespace, name)
    for waiter in op.routes.waiters(namespace, name):
        op.queue.add(("Deployment", *waiter), CHILD_EVENT_DELAY)
