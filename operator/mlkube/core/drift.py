"""Drift runs folded into a DriftMonitor's status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mlkube.api.driftmonitor import ColumnResult, DriftMonitorSpec, DriftMonitorStatus, DriftRun
from mlkube.core.conditions import timestamp


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
    columns = [ColumnResult.model_validate(c) for c in result.get("columns") or []]
    history = [*status.history, run][-spec.history_limit :]
    return status.model_copy(update={"last_run": run, "columns": columns, "history": history})
