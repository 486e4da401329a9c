"""When drift turns into a new TrainingJob: hysteresis, cooldown, fresh samples."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlkube.api.driftmonitor import DriftMonitorSpec, DriftMonitorStatus, DriftRun
from mlkube.core.retrain import decide_retrain

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TEMPLATE = {
    "model": "iris",
    "dataset": {"uri": "builtin:iris"},
    "estimator": {"className": "sklearn.linear_model.LogisticRegression"},
}


def monitor(**retrain: object) -> DriftMonitorSpec:
    return DriftMonitorSpec.model_validate(
        {
            "deployment": "iris",
            "action": {"type": "Retrain", "retrain": {"template": TEMPLATE, **retrain}},
        }
    )


def run(verdict: str) -> DriftRun:
    return DriftRun.model_validate(
        {"at": "2026-11-27T12:00:00Z", "verdict": verdict, "driftedColumns": ["petal_width_cm"]}
    )


def test_drift_retrains_and_resets_the_streak() -> None:
    d = decide_retrain(monitor(), DriftMonitorStatus(), run("Drift"), logged_rows=500, now=NOW)
    assert d.retrain
    assert d.consecutive_detections == 0
    assert "petal_width_cm" in d.message


def test_no_action_never_retrains() -> None:
    spec = DriftMonitorSpec(deployment="iris")
    d = decide_retrain(spec, DriftMonitorStatus(), run("Drift"), logged_rows=500, now=NOW)
    assert not d.retrain
    assert d.consecutive_detections == 1


def test_consecutive_detections_are_required() -> None:
    spec = monitor(consecutiveDetections=3)
    status = DriftMonitorStatus()
    for expected in (1, 2):
        d = decide_retrain(spec, status, run("Drift"), 500, NOW)
        assert not d.retrain
        assert d.reason == "AwaitingConsecutiveDetections"
        assert d.consecutive_detections == expected
        status = status.model_copy(update={"consecutive_detections": d.consecutive_detections})
    assert decide_retrain(spec, status, run("Drift"), 500, NOW).retrain


def test_no_drift_breaks_the_streak_but_insufficient_data_does_not() -> None:
    status = DriftMonitorStatus(consecutive_detections=2)
    assert decide_retrain(monitor(), status, run("NoDrift"), 500, NOW).consecutive_detections == 0
    held = decide_retrain(monitor(), status, run("InsufficientData"), 500, NOW)
    assert held.consecutive_detections == 2
    assert not held.retrain
    assert held.reason == "InsufficientData"


@pytest.mark.parametrize(
    ("last", "expected"), [("2026-11-27T11:30:00Z", False), ("2026-11-27T10:59:59Z", True)]
)
def test_cooldown_blocks_a_second_retrain(last: str, expected: bool) -> None:
    status = DriftMonitorStatus(last_retrain_time=last, rows_at_last_retrain=0)
    d = decide_retrain(monitor(cooldownSeconds=3600), status, run("Drift"), 500, NOW)
    assert d.retrain is expected
    if not expected:
        assert d.reason == "CoolingDown"


def test_min_new_samples_counts_rows_since_the_last_retrain() -> None:
    spec = monitor(cooldownSeconds=0, minNewSamples=1000)
    status = DriftMonitorStatus(last_retrain_time="2026-11-27T11:00:00Z", rows_at_last_retrain=4000)
    short = decide_retrain(spec, status, run("Drift"), logged_rows=4999, now=NOW)
    assert not short.retrain
    assert short.reason == "AwaitingNewSamples"
    assert decide_retrain(spec, status, run("Drift"), logged_rows=5000, now=NOW).retrain


def quality(drift: str, performance: str) -> DriftRun:
    return run(drift).model_copy(
        update={"performance": performance, "performance_value": "0.61", "drifted_columns": []}
    )


def test_degraded_live_quality_retrains_without_drift() -> None:
    d = decide_retrain(monitor(), DriftMonitorStatus(), quality("NoDrift", "Degraded"), 500, NOW)
    assert d.retrain
    assert "live quality degraded (0.61)" in d.message
    assert "drift in" not in d.message


def test_degraded_quality_obeys_the_same_hysteresis_cooldown_and_fresh_samples() -> None:
    spec = monitor(consecutiveDetections=2, cooldownSeconds=3600, minNewSamples=100)
    first = decide_retrain(spec, DriftMonitorStatus(), quality("NoDrift", "Degraded"), 500, NOW)
    assert (first.retrain, first.reason) == (False, "AwaitingConsecutiveDetections")
    cooling = DriftMonitorStatus(
        consecutive_detections=1, last_retrain_time="2026-11-27T11:30:00Z", rows_at_last_retrain=0
    )
    assert decide_retrain(spec, cooling, quality("NoDrift", "Degraded"), 500, NOW).reason == (
        "CoolingDown"
    )
    stale = DriftMonitorStatus(
        consecutive_detections=1, last_retrain_time="2026-11-27T10:00:00Z", rows_at_last_retrain=450
    )
    held = decide_retrain(spec, stale, quality("NoDrift", "Degraded"), 500, NOW)
    assert held.reason == "AwaitingNewSamples"


@pytest.mark.parametrize(
    ("drift", "performance", "streak"),
    [
        ("InsufficientData", "Healthy", 0),  # healthy quality says something: the streak breaks
        ("InsufficientData", "InsufficientLabels", 2),  # neither says anything
        ("NoDrift", "InsufficientLabels", 0),
        ("Drift", "Healthy", 3),  # drift alone still counts
    ],
)
def test_what_breaks_a_streak_of_detections(drift: str, performance: str, streak: int) -> None:
    status = DriftMonitorStatus(consecutive_detections=2)
    spec = monitor(consecutiveDetections=5)
    assert (
        decide_retrain(spec, status, quality(drift, performance), 500, NOW).consecutive_detections
        == streak
    )
