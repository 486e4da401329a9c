"""The pure helpers the reconcilers use: what may be served, how drift runs fold into status."""

from __future__ import annotations

from datetime import UTC, datetime

from mlkube.api.driftmonitor import DriftMonitorSpec, DriftMonitorStatus
from mlkube.core.drift import fold_drift_run
from mlkube.core.serving import servable

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def version(ready: str | None, approved: bool | None) -> dict[str, object]:
    conditions = (
        []
        if ready is None
        else [{"type": "Ready", "status": ready, "reason": "DigestMismatch", "message": "bad"}]
    )
    spec: dict[str, object] = (
        {} if approved is None else {"approval": {"approved": approved, "by": "x"}}
    )
    return {"metadata": {"name": "iris-v2"}, "spec": spec, "status": {"conditions": conditions}}


def test_only_verified_and_approved_versions_are_served() -> None:
    assert servable(version("True", True), require_approval=True) == ("iris-v2", None)
    assert servable(version("True", None), require_approval=False) == ("iris-v2", None)
    name, problem = servable(version("True", False), require_approval=True)
    assert name is None
    assert problem is not None
    assert problem[0] == "NotApproved"
    assert "mlkube approve iris-v2" in problem[1]
    _, unverified = servable(version(None, True), require_approval=True)
    assert unverified is not None
    assert unverified[0] == "ModelVersionNotReady"
    _, tampered = servable(version("False", True), require_approval=True)
    assert tampered is not None
    assert "DigestMismatch" in tampered[1]


def test_drift_runs_fold_into_a_bounded_history() -> None:
    spec = DriftMonitorSpec(deployment="iris", history_limit=2)
    status = DriftMonitorStatus()
    result = {
        "verdict": "Drift",
        "rows": 500,
        "driftShare": "0.5",
        "driftedColumns": ["a"],
        "columns": [
            {
                "name": "a",
                "test": "KS",
                "statistic": "0.4",
                "pValue": "1e-9",
                "distance": "0.8",
                "drifted": True,
            }
        ],
    }
    for number in range(3):
        status = fold_drift_run(status, result, f"job-{number}", spec, NOW)
    assert [run.job for run in status.history] == ["job-1", "job-2"]
    assert status.last_run is not None
    assert status.last_run.drifted_columns == ["a"]
    assert status.columns[0].p_value == "1e-9"


def test_a_run_without_a_result_is_an_error_not_a_verdict() -> None:
    status = fold_drift_run(
        DriftMonitorStatus(), {}, "job-0", DriftMonitorSpec(deployment="iris"), NOW
    )
    assert status.last_run is not None
    assert status.last_run.verdict == "Error"


def test_a_run_is_folded_exactly_once() -> None:
    spec = DriftMonitorSpec(deployment="iris")
    result = {"verdict": "Drift", "rows": 500, "driftShare": "1", "driftedColumns": ["a"]}
    once = fold_drift_run(DriftMonitorStatus(), result, "job-0", spec, NOW)
    twice = fold_drift_run(once, result, "job-0", spec, NOW)
    assert twice == once
    assert len(twice.history) == 1
