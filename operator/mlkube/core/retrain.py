"""When a drift verdict should create a new TrainingJob: hysteresis, cooldown, fresh data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mlkube.api.driftmonitor import DriftMonitorSpec, DriftMonitorStatus, DriftRun
from mlkube.core.conditions import parse_timestamp


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    consecutive_detections: int
    """The count to store in status after this run."""
    reason: str
    message: str


def decide_retrain(
    spec: DriftMonitorSpec,
    status: DriftMonitorStatus,
    run: DriftRun,
    logged_rows: int,
    now: datetime,
) -> RetrainDecision:
    """Decide on one new run. `logged_rows` counts every row ever logged for the Deployment.

    A detection is drift or degraded live quality (``PerformanceDegraded``); cooldown,
    hysteresis and minNewSamples apply to both alike. NoDrift or Healthy quality breaks a
    streak; InsufficientData, InsufficientLabels and Error neither count nor break one: they say
    nothing.
    """
    degraded = run.performance == "Degraded"
    detected = run.verdict == "Drift" or degraded
    consecutive = status.consecutive_detections
    if detected:
        consecutive += 1
    elif run.verdict == "NoDrift" or run.performance == "Healthy":
        consecutive = 0

    def hold(reason: str, message: str) -> RetrainDecision:
        return RetrainDecision(False, consecutive, reason, message)

    retrain = spec.action.retrain
    if spec.action.type != "Retrain" or retrain is None:
        return hold("NoAction", "action.type is None")
    if not detected:
        return hold(run.verdict, f"verdict {run.verdict}, performance {run.performance}")
    if consecutive < retrain.consecutive_detections:
        return hold(
            "AwaitingConsecutiveDetections",
            f"{consecutive} of {retrain.consecutive_detections} consecutive detections",
        )
    if status.last_retrain_time is not None:
        elapsed = (now - parse_timestamp(status.last_retrain_time)).total_seconds()
        if elapsed < retrain.cooldown_seconds:
            return hold(
                "CoolingDown",
                f"last retrain {elapsed:.0f}s ago, cooldownSeconds {retrain.cooldown_seconds}",
            )
    new_rows = logged_rows - (status.rows_at_last_retrain or 0)
    if new_rows < retrain.min_new_samples:
        return hold(
            "AwaitingNewSamples",
            f"{new_rows} rows logged since the last retrain, minNewSamples {retrain.min_new_samples}",
        )
    causes = []
    if run.verdict == "Drift":
        causes.append(f"drift in {', '.join(run.drifted_columns) or 'the dataset'}")
    if degraded:
        causes.append(f"live quality degraded ({run.performance_value or 'below threshold'})")
    return RetrainDecision(True, 0, "Retraining", "; ".join(causes))
