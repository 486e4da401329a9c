"""DriftMonitor: compare live inference inputs with the training reference on a schedule."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mlkube.api.common import (
    DECIMAL,
    DNS_LABEL,
    MAP_KEY_LENGTH,
    NAME_LENGTH,
    NUMBER_LENGTH,
    OBJECT_NAME_LENGTH,
    TEMPLATE,
    TEXT_LENGTH,
    URI_LENGTH,
    ApiModel,
    NumberStr,
    Resources,
    StatusBase,
    api_config,
    at_most,
    cel,
    keys_at_most,
    unique_by,
    validations,
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
        default=None,
        pattern=DNS_LABEL,
        max_length=NAME_LENGTH,
        description="Default: the Deployment's stable version.",
    )
    uri: str | None = Field(
        default=None, max_length=URI_LENGTH, description="A Parquet file overriding the sample."
    )


class ColumnOverride(ApiModel):
    name: str = Field(min_length=1, max_length=TEXT_LENGTH)
    kind: Literal["Numeric", "Categorical"] | None = None
    test: Literal["KS", "Wasserstein", "PSI", "ChiSquared", "JensenShannon"] | None = None
    threshold: str | None = Field(default=None, pattern=DECIMAL, max_length=NUMBER_LENGTH)
    ignore: bool = False


class RetrainAction(ApiModel):
    template: TrainingJobSpec = Field(
        description="Spec of the TrainingJob created on drift; editable (the TrainingJob's "
        "immutable fields are fixed in each TrainingJob, not here).",
        json_schema_extra={TEMPLATE: True},
    )
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


PerformanceMetric = Literal["Accuracy", "F1", "RocAuc", "Rmse", "Mae"]
HIGHER_IS_BETTER: frozenset[str] = frozenset({"Accuracy", "F1", "RocAuc"})
OFFLINE_METRIC_KEYS: dict[str, str] = {
    "Accuracy": "accuracy",
    "F1": "f1",
    "RocAuc": "roc_auc",
    "Rmse": "rmse",
    "Mae": "mae",
}
"""Each live metric's key in a ModelVersion's ``spec.metrics`` (the held-out split's figure)."""


class Outcome(ApiModel):
    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$",
        max_length=63,
        description="A number posted with feedback (outcomes.<name>), such as revenue.",
    )
    aggregate: Literal["Sum", "Mean"] = "Sum"


class Performance(ApiModel):
    """Live model quality: logged predictions joined with the labels posted to ``/feedback``
    (and bulk feedback files) by request id, per model version."""

    model_config = api_config(
        cel(
            "!(has(self.threshold) && has(self.maxDrop))",
            "performance must set at most one of threshold and maxDrop",
        ),
        cel(
            "!has(self.metric) || !(self.metric in ['Accuracy', 'F1', 'RocAuc']) || "
            "!has(self.threshold) || double(self.threshold) <= 1.0",
            "performance.threshold must be at most 1 for Accuracy, F1 and RocAuc",
            field_path=".threshold",
        ),
    )

    metric: PerformanceMetric | None = Field(
        default=None,
        description="Default: Accuracy for a classifier, Rmse for a regressor. F1 is macro F1; "
        "RocAuc is one-vs-rest macro ROC AUC from the logged probabilities.",
    )
    threshold: str | None = Field(
        default=None,
        pattern=DECIMAL,
        max_length=NUMBER_LENGTH,
        description="Absolute bound: the least Accuracy/F1/RocAuc, the most Rmse/Mae.",
    )
    max_drop: str | None = Field(
        default=None,
        pattern=DECIMAL,
        max_length=NUMBER_LENGTH,
        description="The most the live metric may fall below (Rmse, Mae: rise above) the "
        "ModelVersion's offline metric on its held-out split. Without threshold and maxDrop "
        "the metric is reported and never degraded.",
    )
    min_labelled_rows: int = Field(
        default=100, ge=1, description="Fewer labelled rows is InsufficientLabels, not a verdict."
    )
    label_delay_seconds: int = Field(
        default=86400,
        ge=0,
        description="How long labels may lag their prediction: a posted label later than this "
        "is not joined, and predictions younger than this do not count as unlabelled yet.",
    )
    outcomes: list[Outcome] = Field(
        default_factory=list, max_length=16, json_schema_extra=unique_by("name")
    )
    slice_by: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        json_schema_extra=validations(
            cel(
                "!self.startsWith('_mlkube_')",
                "sliceBy must be an input column, not one of the inference log's own (_mlkube_*)",
            )
        ),
        description="An input column: the metric per value of its 20 largest slices, the worst "
        "5 in status, and the worst slice's gap to the whole (the bias view); a slice under 10 "
        "labelled rows is shown but never the worst.",
    )
    feedback_uris: list[Annotated[str, Field(max_length=URI_LENGTH)]] = Field(
        default_factory=list,
        max_length=16,
        description="Bulk feedback: CSV or Parquet files (requestId,label[,outcome...]) or "
        "prefixes of them in the namespace's store, for labels that come from a warehouse.",
    )


class DriftMonitorSpec(ApiModel):
    deployment: str = Field(
        pattern=DNS_LABEL, max_length=NAME_LENGTH, description="The mlkube Deployment to watch."
    )
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
    p_value: str = Field(
        default="0.05",
        pattern=DECIMAL,
        max_length=NUMBER_LENGTH,
        json_schema_extra=at_most(1, "pValue"),
    )
    distance_threshold: str = Field(default="0.1", pattern=DECIMAL, max_length=NUMBER_LENGTH)
    drift_share: str = Field(
        default="0.5",
        pattern=DECIMAL,
        max_length=NUMBER_LENGTH,
        json_schema_extra=at_most(1, "driftShare"),
        description="Share of drifted columns that is dataset drift.",
    )
    min_rows: int = Field(default=100, ge=1)
    columns: list[ColumnOverride] = Field(
        default_factory=list, max_length=1024, json_schema_extra=unique_by("name")
    )
    performance: Performance | None = Field(
        default=None,
        description="Live quality from ground truth; when set, the retrain action also fires "
        "on PerformanceDegraded.",
    )
    action: Action = Field(default_factory=Action)
    history_limit: int = Field(default=10, ge=1, le=100)
    resources: Resources | None = None
    image: str | None = Field(default=None, max_length=TEXT_LENGTH)


class ColumnResult(ApiModel):
    name: str = Field(max_length=TEXT_LENGTH)
    test: str = Field(max_length=NUMBER_LENGTH)
    statistic: str = Field(max_length=NUMBER_LENGTH)
    p_value: str | None = Field(default=None, max_length=NUMBER_LENGTH)
    distance: str | None = Field(default=None, max_length=NUMBER_LENGTH)
    drifted: bool


PerformanceVerdict = Literal["Healthy", "Degraded", "InsufficientLabels", "Error"]


class SliceResult(ApiModel):
    value: str = Field(max_length=256, description="The sliceBy column's value.")
    rows: int = Field(ge=0, description="Labelled rows in the slice.")
    metric: str | None = Field(default=None, max_length=32)


class PerformanceResult(ApiModel):
    """One run's live quality for the watched model version."""

    model_version: str | None = Field(default=None, max_length=253)
    verdict: PerformanceVerdict
    metric: PerformanceMetric | None = None
    value: str | None = Field(default=None, max_length=32, description="Realised on labels.")
    estimated: str | None = Field(
        default=None,
        max_length=32,
        description="Estimated from the logged probabilities before labels (CBPE).",
    )
    estimate_gap: str | None = Field(
        default=None,
        max_length=32,
        description="Realised minus estimated on the same labelled rows: far from 0, the "
        "estimate cannot be trusted (concept drift, inputs the training data never covered).",
    )
    offline: str | None = Field(
        default=None, max_length=32, description="The ModelVersion's figure on its held-out split."
    )
    rows: int = Field(default=0, ge=0, description="Logged predictions in the window.")
    labelled_rows: int = Field(default=0, ge=0)
    pending_rows: int = Field(
        default=0, ge=0, description="Unlabelled rows younger than labelDelaySeconds."
    )
    late_labels: int = Field(
        default=0, ge=0, description="Labels that came after labelDelaySeconds: not joined."
    )
    labelled_share: str | None = Field(
        default=None, max_length=32, description="Of the rows old enough to have their label."
    )
    unknown_ids: int = Field(default=0, ge=0, description="Labels naming no logged prediction.")
    duplicate_labels: int = Field(default=0, ge=0, description="Labels replaced by a later one.")
    outcomes: dict[str, NumberStr] = Field(
        default_factory=dict,
        max_length=16,
        json_schema_extra=keys_at_most(MAP_KEY_LENGTH, "outcomes"),
        description="Each spec.performance.outcomes entry, summed or averaged.",
    )
    slices: list[SliceResult] = Field(
        default_factory=list, max_length=5, description="The worst slices by the metric."
    )
    worst_slice_gap: str | None = Field(
        default=None,
        max_length=32,
        description="How much worse the worst slice is than the whole (> 0: worse).",
    )
    message: str | None = Field(default=None, max_length=1024)


class DriftRun(ApiModel):
    at: str = Field(json_schema_extra={"format": "date-time"})
    verdict: Literal["NoDrift", "Drift", "InsufficientData", "Error"]
    rows: int = 0
    drift_share: str | None = Field(default=None, max_length=NUMBER_LENGTH)
    drifted_columns: list[Annotated[str, Field(max_length=TEXT_LENGTH)]] = Field(
        default_factory=list, max_length=1024
    )
    job: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)
    message: str | None = Field(
        default=None, max_length=TEXT_LENGTH, description="Why a run ended in Error."
    )
    model_version: str | None = Field(
        default=None, max_length=OBJECT_NAME_LENGTH, description="The version watched."
    )
    performance: PerformanceVerdict | None = None
    performance_value: str | None = Field(default=None, max_length=NUMBER_LENGTH)


class DriftMonitorStatus(StatusBase):
    cron_job_name: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)
    last_run: DriftRun | None = None
    columns: list[ColumnResult] = Field(
        default_factory=list, max_length=1024, description="Of the last run."
    )
    performance: PerformanceResult | None = Field(default=None, description="Of the last run.")
    history: list[DriftRun] = Field(
        default_factory=list, max_length=100, description="The last spec.historyLimit runs."
    )
    consecutive_detections: int = Field(default=0, ge=0)
    rows_at_last_retrain: int | None = None
    last_retrain_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    last_retrain_job: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)
    retrain_count: int = Field(default=0, ge=0)


class DriftMonitor(ApiModel):
    spec: DriftMonitorSpec
    status: DriftMonitorStatus = Field(default_factory=DriftMonitorStatus)
