"""kopf wiring, nothing else. Run with `kopf run --all-namespaces -m mlkube.controller.main`
(the operator image's command).

Every watch event feeds the caches and puts a key in the work queue: our four kinds enqueue
themselves when their spec, annotations or deletion changed (not on our own status writes);
Jobs and apps/v1 Deployments enqueue the object that owns them. Only `on.event` handlers are used,
so kopf writes nothing onto any object (no progress or diff-base annotations, no finalizers), and
kopf's own retries never run: the work queue is the one place that retries.

Kinds are always selected by group, so `deployments.mlkube.io` is never confused with apps/v1.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, cast

import kopf

from mlkube.api.common import GROUP, VERSION
from mlkube.api.crdgen import KINDS
from mlkube.config import OperatorConfig
from mlkube.controller import metrics
from mlkube.controller.cache import Body
from mlkube.controller.context import Context
from mlkube.controller.deployment import DeploymentReconciler
from mlkube.controller.driftmonitor import DriftMonitorReconciler
from mlkube.controller.events import EventRecorder
from mlkube.controller.kube import Cluster
from mlkube.controller.metrics_auth import MetricsAuth, serve_metrics
from mlkube.controller.modelversion import ModelVersionReconciler
from mlkube.controller.queue import Key, WorkQueue
from mlkube.controller.trainingjob import TrainingJobReconciler

METRICS_PORT = int(os.environ.get("MLKUBE_METRICS_PORT", "8080"))
METRICS_SECURE = os.environ.get("MLKUBE_METRICS_SECURE", "true").lower() != "false"
"""/metrics only for tokens allowed to get it (`metrics_auth`); the chart's metrics.secure."""
WORKERS = int(os.environ.get("MLKUBE_WORKERS", "16"))
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


class Operator:
    """The process-wide pieces, made at start-up."""

    def __init__(self) -> None:
        self.queue = WorkQueue(self.reconcile, workers=WORKERS)
        kube = Cluster()
        self.events = EventRecorder(kube.post_event)
        self.ctx = Context(
            kube, OperatorConfig.from_env(), post_event=self.events.record, enqueue=self.queue.add
        )
        self.reconcilers: dict[str, Callable[[str, str], float | None]] = {
            "TrainingJob": TrainingJobReconciler(self.ctx),
            "ModelVersion": ModelVersionReconciler(self.ctx),
            "Deployment": DeploymentReconciler(self.ctx),
            "DriftMonitor": DriftMonitorReconciler(self.ctx),
        }
        self.seen: dict[Key, tuple[Any, ...]] = {}
        self.task: asyncio.Task[None] | None = None

    def reconcile(self, key: Key) -> float | None:
        kind, namespace, name = key
        return self.reconcilers[kind](namespace, name)

    def object_event(self, kind: str, event_type: str | None, body: Body) -> None:
        """Cache the object; enqueue it unless only its status moved (our own write)."""
        meta = body.get("metadata") or {}
        key = (kind, meta.get("namespace") or "", meta["name"])
        kept = self.ctx.caches.objects[kind].observe(event_type, body)
        if kept is None:
            self.seen.pop(key, None)
            metrics.forget(*key)
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
        serve_metrics(METRICS_PORT, MetricsAuth(_operator.ctx.kube) if METRICS_SECURE else None)
    _operator.task = asyncio.create_task(_operator.queue.serve())


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    op = operator()
    if op.task is not None:
        op.task.cancel()
    await asyncio.to_thread(op.events.flush)


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
