"""The operator's own Prometheus metrics, served on /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("mlkube_operator_reconciles", "Reconciles per kind.", ["kind"])
RECONCILE_ERRORS = Counter("mlkube_operator_reconcile_errors", "Reconciles that raised.", ["kind"])
RECONCILE_SECONDS = Histogram(
    "mlkube_operator_reconcile_duration_seconds", "Reconcile time.", ["kind"]
)
CANARY_WEIGHT = Gauge("mlkube_canary_weight", "Canary traffic weight.", ["namespace", "deployment"])
CANARY_STEP = Gauge("mlkube_canary_step", "Current canary step.", ["namespace", "deployment"])
DRIFT_SHARE = Gauge(
    "mlkube_drift_share", "Share of drifted columns.", ["namespace", "driftmonitor"]
)
DRIFT_STATISTIC = Gauge(
    "mlkube_drift_column_statistic",
    "Last per-column drift statistic.",
    ["namespace", "driftmonitor", "column"],
)
DRIFT_DETECTED = Gauge(
    "mlkube_drift_detected", "1 when the last run found drift.", ["namespace", "driftmonitor"]
)
LIVE_PERFORMANCE = Gauge(
    "mlkube_live_performance",
    "Last live-quality figure per watched model version: realised on labels or estimated (CBPE).",
    ["namespace", "driftmonitor", "model_version", "metric", "figure"],
)
LABELLED_SHARE = Gauge(
    "mlkube_labelled_share",
    "Share of the window's predictions old enough for a label that have one.",
    ["namespace", "driftmonitor", "model_version"],
)
MODEL_VERSIONS = Gauge("mlkube_model_versions", "ModelVersions by phase.", ["namespace", "phase"])
API_REQUESTS = Counter("mlkube_operator_api_requests", "Requests to the API server.", ["method"])
QUEUE_DEPTH = Gauge("mlkube_operator_queue_depth", "Keys waiting in the work queue.")
QUEUE_RETRIES = Counter(
    "mlkube_operator_queue_retries",
    "Reconciles that raised, by error kind: terminal ones wait for a change of their object (and "
    "one slow look), the others back off exponentially.",
    ["error", "terminal"],
)
EVENTS_DROPPED = Counter(
    "mlkube_operator_events_dropped", "Events dropped because the event queue was full."
)
RECONCILE_DEADLINES = Counter(
    "mlkube_operator_reconcile_deadlines_exceeded",
    "Reconciles that ran past their deadline.",
    ["kind"],
)

_SERIES_OF: dict[str, tuple[Gauge, ...]] = {
    "Deployment": (CANARY_WEIGHT, CANARY_STEP),
    "DriftMonitor": (
        DRIFT_SHARE,
        DRIFT_STATISTIC,
        DRIFT_DETECTED,
        LIVE_PERFORMANCE,
        LABELLED_SHARE,
    ),
}
"""The gauges labelled with one object of a kind (by `namespace` and the kind's name)."""


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop a deleted object's series: a stale value would be scraped forever, naming a tenant's
    object long after it is gone."""
    label = kind.lower()
    for gauge in _SERIES_OF.get(kind, ()):
        for metric in gauge.collect():
            for sample in metric.samples:
                labels = sample.labels
                if labels.get("namespace") == namespace and labels.get(label) == name:
                    with suppress(KeyError):  # a concurrent forget took it first
                        gauge.remove(*labels.values())


@contextmanager
def reconciling(kind: str) -> Iterator[None]:
    RECONCILES.labels(kind).inc()
    started = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILE_ERRORS.labels(kind).inc()
        raise
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
