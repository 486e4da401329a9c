"""kopf wiring, nothing else. Run with `kopf run --all-namespaces -m mlkube.controller.main`
(the operator image's command).

Every watch event feeds the caches and puts a key in the work queue: our four kinds enqueue
themselves when their spec, annotations or deletion changed (not on our own status writes);
Jobs and apps/v1 Deployments enqueue the object that owns them. Only `on.event` handlers are used,
so kopf writes nothing onto any object (no progress or diff-base annotations, no finalizers), and
kopf's own retries never run: the work queue is the one place that retries.

Kinds are always selected by group, so `deployments.mlkube.io` is never confused with apps/v1.

With `MLKUBE_LEADER_ELECTION_LEASE` (the chart sets it) every replica watches and fills its caches,
but only the one holding the Lease runs the work queue; one that loses the Lease exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from typing import Any, cast

import kopf

from mlkube.api.common import GROUP, VERSION
from mlkube.api.crdgen import KINDS
from mlkube.api.deployment import DeploymentStatus
from mlkube.config import OperatorConfig
from mlkube.controller import metrics
from mlkube.controller.cache import Body, Routes
from mlkube.controller.context import Context
from mlkube.controller.deployment import DeploymentReconciler
from mlkube.controller.driftmonitor import DriftMonitorReconciler
from mlkube.controller.events import EventRecorder
from mlkube.controller.kube import Cluster
from mlkube.controller.leader import Elector
from mlkube.controller.metrics_auth import MetricsAuth, serve_metrics
from mlkube.controller.modelversion import ModelVersionReconciler
from mlkube.controller.queue import Key, WorkQueue
from mlkube.controller.trainingjob import TrainingJobReconciler
from mlkube.core.history import serving_versions

METRICS_PORT = int(os.environ.get("MLKUBE_METRICS_PORT", "8080"))
METRICS_SECURE = os.environ.get("MLKUBE_METRICS_SECURE", "true").lower() != "false"
"""/metrics only for tokens allowed to get it (`metrics_auth`); the chart's metrics.secure."""
MANAGED = {"app.kubernetes.io/managed-by": "mlkube"}
CHILD_EVENT_DELAY = 1.0
"""Seconds a child's event waits before its owner looks: a burst of them (created, scheduled,
ready) is one reconcile, and new objects in a burst get their first child first."""
OWNER_LABELS = {
    "mlkube.io/trainingjob": "TrainingJob",
    "mlkube.io/modelversion": "ModelVersion",
    "mlkube.io/driftmonitor": "DriftMonitor",
}
"""A Job's label naming the object it belongs to."""
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
            "TrainingJob": TrainingJobReconciler(self.ctx),
            "ModelVersion": ModelVersionReconciler(self.ctx),
            "Deployment": DeploymentReconciler(self.ctx, self.routes),
            "DriftMonitor": DriftMonitorReconciler(self.ctx),
        }
        self.seen: dict[Key, tuple[Any, ...]] = {}
        self.task: asyncio.Task[None] | None = None
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

    def object_event(self, kind: str, event_type: str | None, body: Body) -> None:
        """Cache the object; enqueue it unless only its status moved (our own write)."""
        meta = body.get("metadata") or {}
        key = (kind, meta.get("namespace") or "", meta["name"])
        kept = self.ctx.caches.objects[kind].observe(event_type, body)
        if kept is None:
            self.seen.pop(key, None)
            metrics.forget(*key)
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

    def child_event(self, body: Body, owners: dict[str, str]) -> None:
        """A child changed: its owner (named by one of `owners`' labels) takes a look."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        for label, kind in owners.items():
            owner = labels.get(label)
            if owner:
                self.queue.add((kind, meta.get("namespace") or "", owner), CHILD_EVENT_DELAY)


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


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Watch streams that cannot hang; the work queue started."""
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
    global _operator  # noqa: PLW0603 - one per run: a restarted operator starts afresh
    _operator = Operator()
    if METRICS_PORT:
        auth = MetricsAuth(_operator.ctx.kube) if METRICS_SECURE else None
        _operator.metrics_server = serve_metrics(METRICS_PORT, auth)
    _operator.task = asyncio.create_task(_operator.run())


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    op = operator()
    if op.elector is not None:
        op.elector.stop()
    if op.task is not None:
        op.task.cancel()
    if op.metrics_server is not None:
        await asyncio.to_thread(op.metrics_server.shutdown)  # waits out one poll interval
        op.metrics_server.server_close()
    await asyncio.to_thread(op.events.flush)
    await op.hand_over()


def _watch_kind(kind: str, plural: str) -> None:
    @kopf.on.event(GROUP, VERSION, plural, id=f"{kind.lower()}-changed")
    async def changed(event: kopf.RawEvent, **_: Any) -> None:
        operator().object_event(kind, event.get("type"), cast(Body, event["object"]))


for _kind in KINDS:
    _watch_kind(_kind.kind, _kind.plural)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_changed(event: kopf.RawEvent, **_: Any) -> None:
    op, body = operator(), cast(Body, event["object"])
    op.ctx.caches.jobs.observe(event.get("type"), body)
    op.child_event(body, OWNER_LABELS)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def server_changed(event: kopf.RawEvent, **_: Any) -> None:
    op, body = operator(), cast(Body, event["object"])
    op.ctx.caches.servers.observe(event.get("type"), body)
    op.child_event(body, {"mlkube.io/deployment": "Deployment"})


@kopf.index("gateway.networking.k8s.io", "v1", "httproutes", labels=MANAGED)
async def route_stored(body: kopf.Body, **_: Any) -> None:
    """Keep the route as `core.routes` reads it (nothing goes into kopf's own index). Being a
    kopf index, kopf holds every other handler until all existing routes have been through
    here, so no Deployment is reconciled, and admitted on its gateway, before the operator
    knows the routes already there."""
    operator().routes.put(cast(Body, dict(body)))


@kopf.on.event("gateway.networking.k8s.io", "v1", "httproutes", labels=MANAGED)
async def route_changed(event: kopf.RawEvent, **_: Any) -> None:
    """A route changed or went: the Deployments refused because of it look again."""
    op, body = operator(), cast(Body, event["object"])
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta["name"]
    if event.get("type") == "DELETED":
        op.routes.remove(namespace, name)
    for waiter in op.routes.waiters(namespace, name):
        op.queue.add(("Deployment", *waiter), CHILD_EVENT_DELAY)
