"""kopf handlers: thin triggers for `mlkube.operator.reconcile`. Run with
`kopf run --all-namespaces -m mlkube.operator.main` (the operator image's command).

Handlers return nothing (a return value would land in status) and select every kind by group,
so `deployments.mlkube.io` is never confused with apps/v1.
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from mlkube.config import OperatorConfig
from mlkube.kube import Body, Cluster
from mlkube.operator.reconcile import Reconciler

GROUP, VERSION = "mlkube.io", "v1alpha1"
TRAININGJOBS = (GROUP, VERSION, "trainingjobs")
MODELVERSIONS = (GROUP, VERSION, "modelversions")
DEPLOYMENTS = (GROUP, VERSION, "deployments")
DRIFTMONITORS = (GROUP, VERSION, "driftmonitors")
METRICS_PORT = int(os.environ.get("MLKUBE_METRICS_PORT", "8080"))
ACTIVE_TRAINING = ("Pending", "Running", None)

_reconciler: Reconciler | None = None


def post_event(obj: Body, type_: str, reason: str, message: str) -> None:
    """Through kopf's poster, which runs in the operator's event loop; a dict is a valid body."""
    kopf.event(cast(kopf.Body, obj), type=type_, reason=reason, message=message[:1024])


def reconciler() -> Reconciler:
    global _reconciler  # noqa: PLW0603 - one client per process, made at start-up
    if _reconciler is None:
        _reconciler = Reconciler(Cluster(), OperatorConfig.from_env(), post_event)
    return _reconciler


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Storage renamed to our domain; watch streams that cannot hang."""
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


# -- TrainingJob: create the Job, then follow it while it runs --------------------------------


@kopf.on.resume(*TRAININGJOBS)
@kopf.on.create(*TRAININGJOBS)
@kopf.on.update(*TRAININGJOBS, field="spec.suspend")
def trainingjob_changed(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    reconciler().trainingjob(namespace, name)


def _training_active(status: kopf.Status, spec: kopf.Spec, **_: Any) -> bool:
    return status.get("phase") in ACTIVE_TRAINING and not spec.get("suspend")


@kopf.timer(*TRAININGJOBS, interval=3, when=_training_active)
def trainingjob_progress(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    reconciler().trainingjob(namespace, name)


# -- ModelVersion: verify the artifact, reflect approval --------------------------------------


@kopf.on.resume(*MODELVERSIONS)
@kopf.on.create(*MODELVERSIONS)
@kopf.on.update(*MODELVERSIONS)
def modelversion_changed(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    reconciler().modelversion(namespace, name)


def _verifying(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") in (None, "Pending")


@kopf.timer(*MODELVERSIONS, interval=3, when=_verifying)
def modelversion_verifying(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    reconciler().modelversion(namespace, name)


# -- Deployment: the canary state machine, driven by a timer scoped to rollouts ---------------


@kopf.on.resume(*DEPLOYMENTS)
@kopf.on.create(*DEPLOYMENTS)
@kopf.on.update(*DEPLOYMENTS)
def deployment_changed(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    reconciler().deployment(namespace, name)


def _rolling_out(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") != "Healthy" or bool(status.get("previousStableVersion"))


@kopf.timer(*DEPLOYMENTS, interval=2, when=_rolling_out)
def deployment_rollout(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    reconciler().deployment(namespace, name)


def _following_latest(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("latestApproved"))


@kopf.timer(*DEPLOYMENTS, interval=15, when=_following_latest)
def deployment_follow_latest(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    """An approved newer ModelVersion starts a canary by itself."""
    reconciler().deployment(namespace, name)


# -- DriftMonitor: keep the CronJob, fold in each run's verdict --------------------------------


@kopf.on.resume(*DRIFTMONITORS)
@kopf.on.create(*DRIFTMONITORS)
@kopf.on.update(*DRIFTMONITORS)
def driftmonitor_changed(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    reconciler().driftmonitor(namespace, name)


@kopf.timer(*DRIFTMONITORS, interval=10)
def driftmonitor_runs(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "mlkube kinds are namespaced"
    reconciler().driftmonitor(namespace, name)
