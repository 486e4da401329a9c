"""Drift runs folded into a DriftMonitor's status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from mlkube.api.common import Condition
from mlkube.api.driftmonitor import (
    ColumnResult,
    DriftMonitorSpec,
    DriftMonitorStatus,
    DriftRun,
    PerformanceResult,
)
from mlkube.core.conditions import set_condition, timestamp

PERFORMANCE_DEGRADED = "PerformanceDegraded"


def fold_drift_run(
    status: DriftMonitorStatus,
    result: dict[str, Any],
    job: str,
    spec: DriftMonitorSpec,
    now: datetime,
) -> DriftMonitorStatus:
    """One drift Job's result folded into status: last run, per-column figures, bounded history.
    A run already in the history is not folded again (a restart, a replayed watch event)."""
    if any(run.job == job for run in status.history):
        return status
    verdict = (
        result.get("verdict")
        if result.get("verdict") in ("NoDrift", "Drift", "InsufficientData")
        else "Error"
    )
    run = DriftRun(
        at=timestamp(now),
        verdict=verdict,
        rows=int(result.get("rows") or 0),
        drift_share=result.get("driftShare"),
        drifted_columns=list(result.get("driftedColumns") or []),
        job=job,
        message=None
        if verdict != "Error"
        else str(result.get("message") or "the run left no result")[-1024:],
    )
    performance = _performance(result.get("performance"))
    if performance is not None:
        run.model_version = performance.model_version
        run.performance = performance.verdict
        run.performance_value = performance.value
    run.model_version = result.get("modelVersion") or run.model_version
    columns = [ColumnResult.model_validate(c) for c in result.get("columns") or []]
    history = [*status.history, run][-spec.history_limit :]
    return status.model_copy(
        update={
            "last_run": run,
            "columns": columns,
            "history": history,
            "performance": performance if spec.performance is not None else None,
        }
    )


def _performance(result: object) -> PerformanceResult | None:
    """A run's live-quality result (``runtime.quality.PerformanceReport.to_result``) as status
    holds it; one the status cannot hold is an Error naming why."""
    if result is None:
        return None
    try:
        if not isinstance(result, dict):
            raise TypeError(f"expected an object, got {type(result).__name__}")
        return PerformanceResult.model_validate(_status_shape(result))
    except (ValidationError, TypeError, ValueError, KeyError, IndexError) as e:
        why = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        return PerformanceResult(
            verdict="Error", message=f"the run's performance result is malformed: {why}"[:1024]
        )


_ESTIMATED_KEYS = {"Accuracy": "accuracy", "F1": "f1", "RocAuc": "rocAuc"}


def _status_shape(result: dict[str, Any]) -> dict[str, Any]:
    """The termination message's compact keys mapped onto PerformanceResult's fields."""
    slices = result.get("slices") or {}
    outcomes = {}
    for name, entry in (result.get("outcomes") or {}).items():
        if "sum" not in entry and "mean" not in entry:
            raise KeyError(f"outcome {name} has no sum or mean")
        value = entry.get("sum", entry.get("mean"))
        if value is not None:  # a mean over no rows
            outcomes[name] = str(value)
    message = result.get("reason") or result.get("message") or slices.get("reason")
    return {
        "modelVersion": result.get("modelVersion"),
        "verdict": result.get("verdict"),
        "metric": result.get("metric"),
        "value": result.get("value"),
        "estimated": (result.get("estimated") or {}).get(
            _ESTIMATED_KEYS.get(str(result.get("metric")), "")
        ),
        "estimateGap": result.get("estimateGap"),
        "offline": result.get("offline"),
        "rows": result.get("rows") or 0,
        "labelledRows": result.get("labelled") or 0,
        "labelledShare": result.get("labelledShare"),
        "pendingRows": result.get("pending") or 0,
        "lateLabels": result.get("late") or 0,
        "unknownIds": result.get("unknownIds") or 0,
        "duplicateLabels": result.get("duplicates") or 0,
        "outcomes": outcomes,
        "slices": [
            {"value": str(value)[:256], "metric": metric, "rows": rows}
            for value, metric, rows in slices.get("worst") or []
        ],
        "worstSliceGap": slices.get("gap"),
        "message": None if message is None else str(message)[:1024],
    }


def performance_condition(
    conditions: list[Condition],
    performance: PerformanceResult | None,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """``PerformanceDegraded``: True past the threshold, False when healthy, Unknown when the run
    could not say (too few labels, an error); absent while spec.performance is unset."""
    if performance is None:
        return [c for c in conditions if c.type != PERFORMANCE_DEGRADED]
    figure = f"live {performance.metric} {performance.value}" if performance.value else ""
    if performance.verdict == "Degraded":
        limit = f" (offline {performance.offline})" if performance.offline else ""
        return set_condition(
            conditions, PERFORMANCE_DEGRADED, "True", "BelowThreshold",
            f"{performance.model_version}: {figure}{limit} is past the threshold"
            + (f"; estimated {performance.estimated}" if performance.estimated else ""),
            generation, now,
        )  # fmt: skip
    if performance.verdict == "Healthy":
        return set_condition(
            conditions, PERFORMANCE_DEGRADED, "False", "WithinThreshold",
            f"{performance.model_version}: {figure or 'no threshold set'}", generation, now,
        )  # fmt: skip
    message = performance.message or (
        f"{performance.labelled_rows} labelled rows of {performance.rows}"
        if performance.verdict == "InsufficientLabels"
        else "the run left no reason"
    )
    return set_condition(
        conditions, PERFORMANCE_DEGRADED, "Unknown", performance.verdict, message, generation, now
    )
