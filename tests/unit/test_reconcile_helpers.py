"""The pure helpers the reconcilers use: what may be served, how drift runs fold into status."""

from __future__ import annotations

from datetime import UTC, datetime

from mlkube.api.driftmonitor import DriftMonitorSpec, DriftMonitorStatus
from mlkube.core.conditions import condition
from mlkube.core.drift import PERFORMANCE_DEGRADED, fold_drift_run, performance_condition
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


WATCHED = DriftMonitorSpec.model_validate(
    {"deployment": "iris", "performance": {"metric": "Accuracy", "maxDrop": "0.05"}}
)
DEGRADED = {
    "modelVersion": "iris-v2",
    "verdict": "Drift",
    "performance": {  # runtime.quality.PerformanceReport.to_result's shape
        "modelVersion": "iris-v2",
        "verdict": "Degraded",
        "metric": "Accuracy",
        "value": "0.7",
        "estimated": {"accuracy": "0.95", "f1": "0.94"},
        "estimateGap": "-0.25",
        "offline": "0.97",
        "rows": 1000,
        "labelled": 900,
        "labelledShare": "0.9",
        "pending": 0,
        "late": 2,
        "duplicates": 5,
        "unknownIds": 3,
        "slices": {"by": "channel", "gap": "0.2", "worst": [["web", "0.5", 300]]},
        "outcomes": {"revenue": {"sum": "1234.5", "rows": 900}},
    },
}


def test_a_degraded_run_sets_performance_degraded_with_its_figures() -> None:
    status = fold_drift_run(DriftMonitorStatus(), DEGRADED, "job-0", WATCHED, NOW)
    performance = status.performance
    assert performance is not None
    assert performance.outcomes == {"revenue": "1234.5"}
    assert (performance.estimated, performance.estimate_gap) == ("0.95", "-0.25")
    assert (performance.labelled_rows, performance.late_labels) == (900, 2)
    assert (performance.duplicate_labels, performance.unknown_ids) == (5, 3)
    assert performance.slices[0].value == "web"
    assert performance.worst_slice_gap == "0.2"
    assert status.last_run is not None
    assert (status.last_run.performance, status.last_run.performance_value) == ("Degraded", "0.7")
    assert status.last_run.model_version == "iris-v2"
    found = condition(performance_condition([], status.performance, 3, NOW), PERFORMANCE_DEGRADED)
    assert found is not None
    assert (found.status, found.reason, found.observed_generation) == ("True", "BelowThreshold", 3)
    assert "live Accuracy 0.7" in found.message
    assert "offline 0.97" in found.message
    assert "estimated 0.95" in found.message


def test_too_few_labels_is_unknown_and_a_healthy_run_clears_the_condition() -> None:
    few = {"verdict": "InsufficientLabels", "metric": "Accuracy", "rows": 50, "labelled": 3}
    unknown = condition(
        performance_condition([], fold_drift_run(
            DriftMonitorStatus(), {"performance": few}, "j", WATCHED, NOW
        ).performance, 1, NOW),
        PERFORMANCE_DEGRADED,
    )  # fmt: skip
    assert unknown is not None
    assert (unknown.status, unknown.reason) == ("Unknown", "InsufficientLabels")
    assert "3 labelled rows of 50" in unknown.message
    healthy = {**DEGRADED["performance"], "verdict": "Healthy", "value": "0.96"}  # type: ignore[dict-item]
    status = fold_drift_run(DriftMonitorStatus(), {"performance": healthy}, "j", WATCHED, NOW)
    cleared = condition(performance_condition([], status.performance, 1, NOW), PERFORMANCE_DEGRADED)
    assert cleared is not None
    assert (cleared.status, cleared.reason) == ("False", "WithinThreshold")


def test_a_malformed_performance_result_is_an_error_naming_why() -> None:
    bad = {"performance": {"verdict": "Great", "rows": -1, "outcomes": {"x": {}}}}
    status = fold_drift_run(DriftMonitorStatus(), bad, "j", WATCHED, NOW)
    assert status.performance is not None
    assert status.performance.verdict == "Error"
    assert status.performance.message is not None
    assert "malformed" in status.performance.message


def test_without_spec_performance_the_status_has_none_and_no_condition() -> None:
    plain = DriftMonitorSpec(deployment="iris")
    status = fold_drift_run(DriftMonitorStatus(), DEGRADED, "j", plain, NOW)
    assert status.performance is None
    assert performance_condition([], None, 1, NOW) == []
