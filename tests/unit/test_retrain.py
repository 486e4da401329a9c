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
