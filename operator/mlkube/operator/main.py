"""kopf handlers: thin triggers for `mlkube.operator.reconcile`. Run with
`kopf run --all-namespaces -m mlkube.operator.main` (the operator image's command).

Changes reconcile at once; follow-ups (a running Job, a canary step, a drift run) come from the
schedule each reconcile asks for (`mlkube.operator.scheduler`), not from kopf timers.

Handlers return nothing (a return value would land in status) and select every kind by group,
so `deployments.mlkube.io` is never confused with apps/v1.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf
from prometheus_client import start_http_server

from mlkube.config import OperatorConfig
from mlkube.kube import Cluster
from mlkube.operator.reconcile import Reconciler
from mlkube.operator.scheduler import Scheduler

GROUP, VERSION = "mlkube.io", "v1alpha1"
TRAININGJOBS = (GROUP, VERSION, "trainingjobs")
MODELVERSIONS = (GROUP, VERSION, "modelversions")
DEPLOYMENTS = (GROUP, VERSION, "deployments")
DRIFTMONITORS = (GROUP, VERSION, "driftmonitors")
METRICS_PORT = int(os.environ.get("MLKUBE_METRICS_PORT", "8080"))

_reconciler: Reconciler | None = None
_scheduler: Scheduler | None = None
_scheduler_task: asyncio.Task[None] | None = None


def reconciler() -> Reconciler:
    global _reconciler  # noqa: PLW0603 - one client per process, made at start-up
    if _reconciler is None:
        cluster = Cluster()
        _reconciler = Reconciler(cluster, OperatorConfig.from_env(), cluster.post_event)
    return _reconciler


def reconcile(kind: str, namespace: str, name: str) -> float | None:
    r = reconciler()
    by_kind = {
        "TrainingJob": r.trainingjob,
        "ModelVersion": r.modelversion,
        "Deployment": r.deployment,
        "DriftMonitor": r.driftmonitor,
    }
    return by_kind[kind](namespace, name)


def scheduler() -> Scheduler:
    global _scheduler  # noqa: PLW0603 - one schedule per process
    if _scheduler is None:
        _scheduler = Scheduler(reconcile)
    return _scheduler


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Storage renamed to our domain; watch streams that cannot hang; the reconcile schedule."""
    global _scheduler_task  # noqa: PLW0603 - cancelled at cleanup
    settings.persistence.finalizer = "mlkube.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="mlkube.io", v1=False
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="mlkube.io", key="last-handled-configuration", v1=False
    )
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16
    if METRICS_PORT:
        start_http_server(METRICS_PORT)
    reconciler()
    _scheduler_task = asyncio.create_task(scheduler().serve())


@kopf.on.cleanup()
async def stop_schedule(**_: Any) -> None:
    if _scheduler_task is not None:
        _scheduler_task.cancel()


def changed(kind: str, namespace: str | None, name: str) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    scheduler().run_now((kind, namespace, name))


@kopf.on.resume(*TRAININGJOBS)
@kopf.on.create(*TRAININGJOBS)
@kopf.on.update(*TRAININGJOBS, field="spec.suspend")
def trainingjob_changed(namespace: str | None, name: str, **_: Any) -> None:
    changed("TrainingJob", namespace, name)


@kopf.on.resume(*MODELVERSIONS)
@kopf.on.create(*MODELVERSIONS)
@kopf.on.update(*MODELVERSIONS)
def modelversion_changed(namespace: str | None, name: str, **_: Any) -> None:
    changed("ModelVersion", namespace, name)


@kopf.on.resume(*DEPLOYMENTS)
@kopf.on.create(*DEPLOYMENTS)
@kopf.on.update(*DEPLOYMENTS)
def deployment_changed(namespace: str | None, name: str, **_: Any) -> None:
    """Spec edits and CLI actions (annotations) alike."""
    changed("Deployment", namespace, name)


@kopf.on.resume(*DRIFTMONITORS)
@kopf.on.create(*DRIFTMONITORS)
@kopf.on.update(*DRIFTMONITORS)
def driftmonitor_changed(namespace: str | None, name: str, **_: Any) -> None:
    changed("DriftMonitor", namespace, name)
