"""DriftMonitor: compare live inference inputs with the training reference on a schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlkube.api.common import (
    DECIMAL,
    DNS_LABEL,
    ApiModel,
    Resources,
    StatusBase,
    api_config,
    at_most,
    cel,
    unique_by,
)
from mlkube.api.trainingjob import TrainingJobSpec

_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DAYS = "SUN|MON|TUE|WED|THU|FRI|SAT"
_CRON_VALUES = (
    "[0-5]?[0-9]",  # minute 0-59
    "[01]?[0-9]|2[0-3]",  # hour 0-23
    "0?[1-9]|[12][0-9]|3[01]",  # day of month 1-31
    f"0?[1-9]|1[0-2]|{_MONTHS}|{_MONTHS.lower()}",  # month 1-12
    f"0?[0-7]|{_DAYS}|{_DAYS.lower()}",  # day of week 0-7
)


def _cron_field(values: str) -> str:
    """One field: `*` or a value or range, with an optional step, comma-separated."""
    item = rf"(\*|({values})(-({values}))?)(/[0-9]+)?"
    return rf"{item}(,{item})*"


CRON_PATTERN = (
    r"^(@(yearly|annually|monthly|weekly|daily|hourly)|"
    + r"\s+".join(_cron_field(v) for v in _CRON_VALUES)
    + ")$"
)
"""Five cron fields, each within its range (minute 0-59, hour 0-23, day 1-31, month 1-12,
weekday 0-7), or a macro; checked by the API server through the CEL rule below."""
CRON_RULE = "self.matches('" + CRON_PATTERN.replace("\\", "\\\\") + "')"

NumericTest = Literal["KS", "Wasserstein", "PSI"]
CategoricalTest = Literal["ChiSquared", "JensenShannon", "PSI"]


class Window(ApiModel):
    model_config = api_config(
        cel("has(self.rows) || has(self.seconds)", "window must set rows or seconds")
    )

    rows: int | None = Field(default=None, ge=1, description="The last N logged rows.")
    seconds: int | None = Field(
        default=None, ge=1, description="Rows logged in the last N seconds."
    )


class Reference(ApiModel):
    model_version: str | None = Field(
        default=None, pattern=DNS_LABEL, description="Default: the Deployment's stable version."
    )
    uri: str | None = Field(default=None, description="A Parquet file overriding the sample.")


class ColumnOverride(ApiModel):
    name: str = Field(min_length=1)
    kind: Literal["Numeric", "Categorical"] | None = None
    test: Literal["KS", "Wasserstein", "PSI", "ChiSquared", "JensenShannon"] | None = None
    threshold: str | None = Field(default=None, pattern=DECIMAL)
    ignore: bool = False


class RetrainAction(ApiModel):
    template: TrainingJobSpec = Field(description="Spec of the TrainingJob created on drift.")
    cooldown_seconds: int = Field(default=3600, ge=0)
    consecutive_detections: int = Field(
        default=1, ge=1, description="Drifted runs in a row before retraining (hysteresis)."
    )
    min_new_samples: int = Field(
        default=0, ge=0, description="Rows logged since the last retrain before another."
    )


class Action(ApiModel):
    model_config = api_config(
        cel(
            "self.type != 'Retrain' || has(self.retrain)",
            "retrain must be set when type is Retrain",
            field_path=".retrain",
        )
    )

    type: Literal["None", "Retrain"] = "None"
    retrain: RetrainAction | None = None


class DriftMonitorSpec(ApiModel):
    deployment: str = Field(pattern=DNS_LABEL, description="The mlkube Deployment to watch.")
    schedule: str = Field(
        default="*/10 * * * *",
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    CRON_RULE,
                    "schedule must be a five-field cron expression (minute 0-59, hour 0-23, "
                    "day 1-31, month 1-12, weekday 0-7) or an @hourly-style macro",
                )
            ]
        },
    )
    suspend: bool = False
    window: Window = Field(default_factory=lambda: Window(rows=10000))
    reference: Reference = Field(default_factory=Reference)
    method: Literal["SignificantAndLarge", "Evidently"] = Field(
        default="SignificantAndLarge",
        description="SignificantAndLarge: a column drifts when its Bonferroni-corrected p-value "
        "is under pValue AND its distance is over distanceThreshold; Evidently: Evidently's rules.",
    )
    numeric_test: NumericTest = "KS"
    categorical_test: CategoricalTest = "ChiSquared"
    p_value: str = Field(default="0.05", pattern=DECIMAL, json_schema_extra=at_most(1, "pValue"))
    distance_threshold: str = Field(default="0.1", pattern=DECIMAL)
    drift_share: str = Field(
        default="0.5",
        pattern=DECIMAL,
        json_schema_extra=at_most(1, "driftShare"),
        description="Share of drifted columns that is dataset drift.",
    )
    min_rows: int = Field(default=100, ge=1)
    columns: list[ColumnOverride] = Field(
        default_factory=list, max_length=1024, json_schema_extra=unique_by("name")
    )
    action: Action = Field(default_factory=Action)
    history_limit: int = Field(default=10, ge=1, le=100)
    resources: Resources | None = None
    image: str | None = None


class ColumnResult(ApiModel):
    name: str
    test: str
    statistic: str
    p_value: str | None = None
    distance: str | None = None
    drifted: bool


class DriftRun(ApiModel):
    at: str = Field(json_schema_extra={"format": "date-time"})
    verdict: Literal["NoDrift", "Drift", "InsufficientData", "Error"]
    rows: int = 0
    drift_share: str | None = None
    drifted_columns: list[str] = Field(default_factory=list)
    job: str | None = None
    message: str | None = Field(default=None, description="Why a run ended in Error.")


class DriftMonitorStatus(StatusBase):
    cron_job_name: str | None = None
    last_run: DriftRun | None = None
    columns: list[ColumnResult] = Field(default_factory=list, description="Of the last run.")
    history: list[DriftRun] = Field(default_factory=list)
    consecutive_detections: int = Field(default=0, ge=0)
    rows_at_last_retrain: int | None = None
    last_retrain_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    last_retrain_job: str | None = None
    retrain_count: int = Field(default=0, ge=0)


class DriftMonitor(ApiModel):
    spec: DriftMonitorSpec
    status: DriftMonitorStatus = Field(default_factory=DriftMonitorStatus)
