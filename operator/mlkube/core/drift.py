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
    """A run's live-quality result; one the status cannot hold is an Error naming why."""
    if result is None:
        return None
    try:
        return PerformanceResult.model_validate(result)
    except ValidationError as e:
        return PerformanceResult(
            verdict="Error",
            message=f"the run's performance result is malformed: {e.errors()[0]['msg']}"[:1024],
        )


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
            f"{performance.model_version}: {figure}{limit} is past the threshold",
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
