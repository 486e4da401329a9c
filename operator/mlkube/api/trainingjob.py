"""TrainingJob: train a scikit-learn model, gate it on quality, record a ModelVersion."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Literal

from pydantic import Field, JsonValue, WithJsonSchema, field_validator, model_validator

from mlkube.api.common import (
    DECIMAL,
    DNS_LABEL,
    FREE_FORM_STRING,
    MAP_KEY_LENGTH,
    MESSAGE_LENGTH,
    NAME_LENGTH,
    NUMBER_LENGTH,
    OBJECT_NAME_LENGTH,
    TEXT_LENGTH,
    URI_LENGTH,
    ApiModel,
    FreeForm,
    JsonDict,
    NumberStr,
    Resources,
    StatusBase,
    TextStr,
    UriStr,
    api_config,
    at_most,
    cel,
    immutable,
    keys_at_most,
    unique_by,
    validations,
)
from mlkube.api.modelversion import ColumnType, MlflowRun
from mlkube.estimators import ESTIMATORS

DATASET_URI = r"^(builtin:[a-z_]+|file://.+|https://.+|s3://.+)$"
HTTP_URI = r"^https?://[^/?#\s]+(/\S*)?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SIGNED_DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"


class InferenceLogDataset(ApiModel):
    """Labelled production data: the inputs a Deployment of this namespace logged, joined by
    request id with the ground truth posted to its ``/feedback`` (and bulk feedback files)."""

    model_config = api_config(
        cel(
            "!(has(self.rows) && has(self.seconds))",
            "inferenceLog must set at most one of rows and seconds",
        )
    )

    deployment: str = Field(pattern=DNS_LABEL, max_length=63, description="In this namespace.")
    rows: int | None = Field(
        default=None, ge=1, description="The last N logged rows (before the join)."
    )
    seconds: int | None = Field(default=None, ge=1, description="Rows logged in the last N s.")
    append_original: bool = Field(
        default=False, description="Also train on dataset.uri: the original data plus today's."
    )
    feedback_uris: list[UriStr] = Field(
        default_factory=list,
        max_length=16,
        description="Bulk feedback files or prefixes (requestId,label[,outcome...]) in the "
        "namespace's store, beside what /feedback received.",
    )


class Dataset(ApiModel):
    model_config = api_config(
        cel(
            "has(self.uri) || has(self.inferenceLog)",
            "dataset must set uri, inferenceLog or both",
        ),
        cel(
            "!has(self.inferenceLog) || !self.inferenceLog.appendOriginal || has(self.uri)",
            "dataset.uri must be set when inferenceLog.appendOriginal is true",
            field_path=".uri",
        ),
        cel(
            "!has(self.uri) || !has(self.inferenceLog) || self.inferenceLog.appendOriginal",
            "inferenceLog.appendOriginal must be true when dataset.uri is set beside it",
            field_path=".inferenceLog.appendOriginal",
        ),
    )

    uri: str | None = Field(
        default=None,
        pattern=DATASET_URI,
        max_length=URI_LENGTH,
        description="builtin:<name> (iris, wine, breast_cancer, diabetes), file://, https:// or s3://",
    )
    format: Literal["Auto", "Csv", "Parquet"] = "Auto"
    inference_log: InferenceLogDataset | None = None

    def describe(self) -> str:
        """The data as lineage and messages name it."""
        log = self.inference_log
        if log is None:
            return str(self.uri)
        window = (
            f"rows={log.rows}" if log.rows else f"seconds={log.seconds}" if log.seconds else "all"
        )
        source = f"inferenceLog:{log.deployment}?{window}"
        return f"{self.uri}+{source}" if self.uri else source


ESTIMATOR_NAMES: list[JsonValue] = [name for name in sorted(ESTIMATORS)]


class Estimator(ApiModel):
    class_name: str = Field(
        json_schema_extra={"enum": ESTIMATOR_NAMES},
        description="An allowlisted scikit-learn estimator class path.",
    )
    hyperparameters: FreeForm = Field(
        default_factory=dict,
        description="Keyword arguments for the estimator's constructor.",
    )

    @field_validator("class_name")
    @classmethod
    def _allowlisted(cls, value: str) -> str:
        if value not in ESTIMATORS:
            raise ValueError(
                f"must be one of the allowlisted estimators: {', '.join(sorted(ESTIMATORS))}"
            )
        return value


class Split(ApiModel):
    test_percent: int = Field(default=20, ge=5, le=90)
    seed: int = Field(default=42, ge=0)
    stratify: bool = Field(default=True, description="Stratify by target for classifiers.")


class ColumnRange(ApiModel):
    model_config = api_config(
        cel(
            "!has(self.min) || !has(self.max) || double(self.min) <= double(self.max)",
            "a data-test range's min must not exceed its max",
            field_path=".min",
        )
    )

    column: str = Field(min_length=1, max_length=TEXT_LENGTH)
    min: str | None = Field(default=None, pattern=SIGNED_DECIMAL, max_length=NUMBER_LENGTH)
    max: str | None = Field(default=None, pattern=SIGNED_DECIMAL, max_length=NUMBER_LENGTH)


class ColumnTest(ApiModel):
    """What one column must hold; undeclared columns keep the types the file gives them."""

    model_config = api_config(
        cel(
            "!has(self.values) || (has(self.type) && self.type == 'string')",
            "values must only be given for a column of type string",
            field_path=".values",
        ),
    )

    name: str = Field(min_length=1, max_length=TEXT_LENGTH)
    type: ColumnType | None = Field(
        default=None,
        description="float, int, string or bool; a value that is not one fails the run naming its row.",
    )
    allow_missing: bool | None = Field(
        default=None,
        description="Whether the column may have missing values (then a request may send null "
        "for it); default: as dataTests.maxMissingPercent allows.",
    )
    values: list[TextStr] | None = Field(
        default=None, min_length=1, max_length=4096, description="The allowed categories."
    )


class DataTests(ApiModel):
    """Checks run on the dataset before fitting; a failure stops the run as DataValidationFailed."""

    min_rows: int = Field(default=20, ge=1)
    max_missing_percent: int = Field(default=0, ge=0, le=100)
    ranges: list[ColumnRange] = Field(
        default_factory=list, max_length=256, json_schema_extra=unique_by("column")
    )
    columns: list[ColumnTest] = Field(
        default_factory=list,
        max_length=1024,
        json_schema_extra=unique_by("name"),
        description="Per-column types, missing values and categories, checked before fitting.",
    )


class NumericPreprocessing(ApiModel):
    """For float and int columns: impute, then scale."""

    model_config = api_config(
        cel(
            "!has(self.fillValue) || self.impute == 'Constant'",
            "fillValue must only be given with impute: Constant",
            field_path=".fillValue",
        ),
    )

    impute: Literal["None", "Mean", "Median", "Constant"] = "Median"
    fill_value: str | None = Field(
        default=None,
        pattern=SIGNED_DECIMAL,
        max_length=NUMBER_LENGTH,
        description="For impute: Constant; default 0.",
    )
    scale: Literal["None", "Standard", "MinMax"] = "None"


class CategoricalPreprocessing(ApiModel):
    """For string and bool columns: impute, then encode."""

    model_config = api_config(
        cel(
            "!has(self.fillValue) || self.impute == 'Constant'",
            "fillValue must only be given with impute: Constant",
            field_path=".fillValue",
        ),
    )

    impute: Literal["None", "MostFrequent", "Constant"] = "MostFrequent"
    fill_value: str | None = Field(
        default=None, max_length=256, description="For impute: Constant; default 'missing'."
    )
    encode: Literal["OneHot", "Ordinal"] = "OneHot"


class Preprocessing(ApiModel):
    """Fitted on the training split only and stored in the artifact: the server applies the same."""

    numeric: NumericPreprocessing = Field(default_factory=NumericPreprocessing)
    categorical: CategoricalPreprocessing = Field(default_factory=CategoricalPreprocessing)


class ChampionGate(ApiModel):
    """The new model must beat an earlier version on the same held-out split by a margin."""

    model_config = api_config(
        cel(
            "has(self.modelVersion) != has(self.deployment)",
            "qualityGates.champion must set exactly one of modelVersion and deployment",
        )
    )

    model_version: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=NAME_LENGTH,
        description="Name of the ModelVersion to beat.",
    )
    deployment: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=NAME_LENGTH,
        description="Beat the version this Deployment (same namespace) serves as stable when the "
        "training starts: with dataset.inferenceLog, the serving version is scored on the same "
        "held-out split of the labelled production data.",
    )
    min_improvement: str = Field(default="0", pattern=DECIMAL, max_length=NUMBER_LENGTH)


class QualityGates(ApiModel):
    min_accuracy: str | None = Field(
        default=None,
        pattern=DECIMAL,
        max_length=NUMBER_LENGTH,
        json_schema_extra=at_most(1, "minAccuracy"),
    )
    min_f1: str | None = Field(
        default=None,
        pattern=DECIMAL,
        max_length=NUMBER_LENGTH,
        json_schema_extra=at_most(1, "minF1"),
    )
    min_r2: str | None = Field(default=None, pattern=SIGNED_DECIMAL, max_length=NUMBER_LENGTH)
    max_rmse: str | None = Field(default=None, pattern=DECIMAL, max_length=NUMBER_LENGTH)
    max_mae: str | None = Field(default=None, pattern=DECIMAL, max_length=NUMBER_LENGTH)
    champion: ChampionGate | None = None


def _gates_fit_the_task() -> list[JsonDict]:
    """A gate for the other task can never pass or fail: it is a typo, refused at admission."""
    tasks: dict[str, list[JsonValue]] = {"classification": [], "regression": []}
    for name, task in sorted(ESTIMATORS.items()):
        tasks[task].append(name)
    rules = []
    for task, gates in (
        ("classification", ("minAccuracy", "minF1")),
        ("regression", ("minR2", "maxRmse", "maxMae")),
    ):
        allowed = json.dumps(tasks[task])
        for gate in gates:
            rules.append(
                cel(
                    f"!has(self.qualityGates) || !has(self.qualityGates.{gate}) || "
                    f"self.estimator.className in {allowed}",
                    f"qualityGates.{gate} must only be set for a {task} estimator",
                    field_path=f".qualityGates.{gate}",
                )
            )
    return rules


class MlflowTracking(ApiModel):
    """Log the training as an MLflow run: parameters, held-out metrics, the dataset, tags and the
    model (scikit-learn flavor, signature from the input schema); optionally register it."""

    tracking_uri: str = Field(
        pattern=HTTP_URI,
        max_length=URI_LENGTH,
        description="The tracking server, http:// or https:// (MLFLOW_TRACKING_URI).",
    )
    experiment: str = Field(
        min_length=1,
        max_length=500,
        description="Experiment name; created when it does not exist.",
    )
    run_name: str | None = Field(
        default=None, max_length=250, description="Default: the TrainingJob's name."
    )
    registered_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Register the model under this name in MLflow's registry: one version per "
        "training, tagged with its ModelVersion.",
    )
    credentials_secret: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=OBJECT_NAME_LENGTH,
        description="A Secret in this namespace whose keys username and password (MLflow "
        "basic auth) or token (a bearer token) the trainer sends; the operator never reads it.",
    )
    required: bool = Field(
        default=True,
        description="true: a tracking server that cannot be reached or refuses the run fails "
        "the training (TrackingUnavailable, checked before fitting); false: the version is "
        "trained and registered in the cluster all the same, with Tracked False and a Warning.",
    )


class Tracking(ApiModel):
    mlflow: MlflowTracking | None = None


MAX_TRIALS = 500
"""Trials of one search (a Grid's product of value counts, or Random's trials): an Indexed Job
of more would be refused by nobody but would fill the store and the cluster for one model."""
SEARCH_DIMENSIONS = 8
SEARCH_VALUES = 64
HYPERPARAMETER = r"^[A-Za-z_][A-Za-z0-9_]*$"
METRICS = {"accuracy": "classification", "f1": "classification", "roc_auc": "classification",
           "rmse": "regression", "mae": "regression", "r2": "regression"}  # fmt: skip
"""Validation metrics a search ranks trials by, with the task that has them."""


SearchValues = Annotated[
    list[JsonValue],
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "maxItems": SEARCH_VALUES,
            "items": {
                "x-kubernetes-preserve-unknown-fields": True,
                "nullable": True,
                "maxLength": FREE_FORM_STRING,
                "maxItems": 0,
                "maxProperties": 0,
            },
        }
    ),
]


class SearchDimension(ApiModel):
    """One hyperparameter's values: a list (Grid or Random picks from it) or a range (Random
    samples it, uniformly or on a log scale)."""

    model_config = api_config(
        cel(
            "has(self.min) == has(self.max)",
            "a search range must set both min and max",
            field_path=".max",
        ),
        cel(
            "!has(self.min) || double(self.min) < double(self.max)",
            "a search range's min must be less than its max",
            field_path=".min",
        ),
        cel(
            "!has(self.min) || !has(self.log) || !self.log || double(self.min) > 0.0",
            "a search range with log: true must have min greater than 0",
            field_path=".min",
        ),
        cel(
            "has(self.min) || (!has(self.log) && !has(self.type))",
            "log and type must only be given with min and max",
            field_path=".type",
        ),
    )

    values: SearchValues | None = Field(
        default=None, description="The values to try: numbers, strings, booleans or null."
    )
    min: str | None = Field(default=None, pattern=SIGNED_DECIMAL, max_length=NUMBER_LENGTH)
    max: str | None = Field(default=None, pattern=SIGNED_DECIMAL, max_length=NUMBER_LENGTH)
    log: bool | None = Field(default=None, description="Sample on a log scale (min > 0).")
    type: Literal["int", "float"] | None = Field(default=None, description="Default: float.")

    @model_validator(mode="after")
    def _values_or_range(self) -> SearchDimension:
        # CEL cannot read `values` (its items have no declared type): checked here, where the
        # operator refuses the spec naming the field (InvalidSpec)
        if (self.values is None) == (self.min is None):
            raise ValueError("must set either values or min and max")
        return self

    @field_validator("values")
    @classmethod
    def _scalars(cls, values: list[JsonValue] | None) -> list[JsonValue] | None:
        if values is not None and not 1 <= len(values) <= SEARCH_VALUES:
            raise ValueError(f"must list 1 to {SEARCH_VALUES} values")
        for value in values or []:
            if isinstance(value, list | dict):
                raise ValueError("must be numbers, strings, booleans or null")
            if isinstance(value, str) and len(value) > FREE_FORM_STRING:
                raise ValueError(f"must be at most {FREE_FORM_STRING} characters each")
        return values


class Search(ApiModel):
    """Hyperparameter search: trials as one Indexed Job, each fitted on the training split minus
    a validation split (or cross-validated on it); the winner is refit on the whole training
    split and faces the quality gates on the held-out test split, touched once."""

    model_config = api_config(
        cel(
            "self.method != 'Grid' || self.space.all(k, !has(self.space[k].min))",
            "search.space: a Grid must list values for every hyperparameter (min and max "
            "ranges need method: Random)",
            field_path=".space",
        ),
        cel(
            "self.method != 'Random' || has(self.trials)",
            "search.trials must be set for method Random",
            field_path=".trials",
        ),
        cel(
            "self.method != 'Grid' || !has(self.trials)",
            "search.trials must only be set for method Random (a Grid tries every combination)",
            field_path=".trials",
        ),
    )

    method: Literal["Grid", "Random"]
    space: dict[str, SearchDimension] = Field(
        min_length=1,
        max_length=SEARCH_DIMENSIONS,
        json_schema_extra=validations(
            cel(
                f"self.all(k, k.size() <= {FREE_FORM_STRING} && k.matches('{HYPERPARAMETER}'))",
                "search.space keys must be hyperparameter names (letters, digits, _), at most "
                f"{FREE_FORM_STRING} characters",
            )
        ),
        description="Hyperparameter name -> values or range; overrides estimator.hyperparameters.",
    )
    trials: int | None = Field(
        default=None, ge=1, le=MAX_TRIALS, description="Random: how many; Grid: every combination."
    )
    parallelism: int = Field(default=1, ge=1, le=64, description="Trial pods at once.")
    metric: Literal["accuracy", "f1", "roc_auc", "rmse", "mae", "r2"] | None = Field(
        default=None,
        description="The validation metric trials are ranked by (rmse and mae: lower is "
        "better); default: accuracy for classifiers, rmse for regressors.",
    )
    validation_percent: int = Field(
        default=20, ge=5, le=50, description="Carved from the training split, never the test split."
    )
    cv_folds: int | None = Field(
        default=None,
        ge=2,
        le=10,
        description="Score each trial by k-fold cross-validation on the training split instead.",
    )
    seed: int | None = Field(
        default=None, ge=0, description="Random's sampling seed; default: split.seed."
    )
    top: int = Field(default=5, ge=1, le=20, description="Trials kept in status, best first.")

    @field_validator("space")
    @classmethod
    def _names(cls, space: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
        for name in space:
            if len(name) > FREE_FORM_STRING or not re.match(HYPERPARAMETER, name):
                raise ValueError(f"key {name[:64]!r} must be a hyperparameter name")
        return space

    @model_validator(mode="after")
    def _grid_size(self) -> Search:
        # the product of the value counts: CEL can neither read `values` nor multiply over a map
        if self.method == "Grid" and self.trial_count() > MAX_TRIALS:
            raise ValueError(
                f"a Grid must have at most {MAX_TRIALS} trials (the product of its value "
                f"counts is {self.trial_count()}): split the search or use method Random"
            )
        return self

    def trial_count(self) -> int:
        """Random: `trials`; Grid: the product of the value counts."""
        if self.method == "Random":
            return self.trials or 1
        return math.prod(len(d.values or []) for d in self.space.values())


def _metric_fits_the_task() -> list[JsonDict]:
    rules = []
    for task in ("classification", "regression"):
        names: list[JsonValue] = [n for n, t in sorted(ESTIMATORS.items()) if t == task]
        metrics = sorted(m for m, t in METRICS.items() if t == task)
        rules.append(
            cel(
                f"!has(self.search) || !has(self.search.metric) || "
                f"!(self.search.metric in {json.dumps(metrics)}) || "
                f"self.estimator.className in {json.dumps(names)}",
                f"search.metric {'/'.join(metrics)} must only be set for a {task} estimator",
                field_path=".search.metric",
            )
        )
    return rules


class TrainingJobSpec(ApiModel):
    model_config = api_config(
        cel(
            "!has(self.features) || !(self.target in self.features)",
            "features must not contain the target column",
            field_path=".features",
        ),
        *_gates_fit_the_task(),
        *_metric_fits_the_task(),
        cel(
            "has(self.search) == has(oldSelf.search)",
            "search must not be added or removed after creation",
            field_path=".search",
        ),
    )

    model: str = Field(
        pattern=DNS_LABEL,
        max_length=50,
        json_schema_extra=immutable("model"),
        description="Name of the model in the registry; versions are numbered per model.",
    )
    dataset: Dataset = Field(json_schema_extra=immutable("dataset"))
    target: str = Field(default="target", min_length=1, max_length=TEXT_LENGTH)
    features: list[TextStr] | None = Field(
        default=None,
        max_length=1024,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Feature columns; default: all but the target.",
    )
    estimator: Estimator = Field(json_schema_extra=immutable("estimator"))
    split: Split = Field(default_factory=Split)
    data_tests: DataTests = Field(default_factory=DataTests)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    quality_gates: QualityGates = Field(default_factory=QualityGates)
    approval_policy: Literal["Manual", "AutoApproveOnGates"] = Field(
        default="Manual",
        description="AutoApproveOnGates approves the ModelVersion when every gate passed.",
    )
    resources: Resources | None = None
    image: str | None = Field(
        default=None, max_length=TEXT_LENGTH, description="Trainer image; default: the operator's."
    )
    active_deadline_seconds: int = Field(default=3600, ge=1)
    backoff_limit: int = Field(default=0, ge=0, le=10)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    suspend: bool = False
    tracking: Tracking | None = None
    search: Search | None = Field(
        default=None,
        json_schema_extra=immutable("search"),
        description="Hyperparameter search before the training: the winner is trained and gated "
        "on the test split.",
    )


Phase = Literal["Pending", "Suspended", "Running", "Succeeded", "Failed"]


class Trial(ApiModel):
    """One trial's record (the trial pod's result)."""

    index: int = Field(ge=0)
    status: Literal["Succeeded", "Failed"]
    parameters: dict[str, TextStr] = Field(
        default_factory=dict,
        max_length=SEARCH_DIMENSIONS,
        json_schema_extra=keys_at_most(FREE_FORM_STRING, "parameters"),
        description="The trial's hyperparameters, as JSON values.",
    )
    value: NumberStr | None = Field(default=None, description="Its validation metric.")
    fit_seconds: NumberStr | None = None
    pod: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)
    reason: str | None = Field(default=None, max_length=NAME_LENGTH)
    message: str | None = Field(default=None, max_length=TEXT_LENGTH)


class SearchStatus(ApiModel):
    metric: str = Field(max_length=NAME_LENGTH)
    total: int = Field(ge=0)
    done: int = Field(default=0, ge=0, description="Trials with a result, failed ones included.")
    failed: int = Field(default=0, ge=0)
    progress: str = Field(default="", max_length=NAME_LENGTH, description="done/total.")
    top: list[Trial] = Field(default_factory=list, max_length=20, description="Best first.")
    winner: Trial | None = None
    trials_uri: str | None = Field(
        default=None, max_length=URI_LENGTH, description="Where every trial's record is."
    )


class TrainingJobStatus(StatusBase):
    phase: Phase | None = None
    job_name: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    metrics: dict[str, NumberStr] = Field(
        default_factory=dict,
        max_length=64,
        json_schema_extra=keys_at_most(MAP_KEY_LENGTH, "metrics"),
    )
    model_version: str | None = Field(
        default=None, max_length=OBJECT_NAME_LENGTH, description="The ModelVersion produced."
    )
    version: int | None = None
    progress: str | None = Field(default=None, max_length=MESSAGE_LENGTH)
    tracking: MlflowRun | None = Field(default=None, description="The run in MLflow.")
    search: SearchStatus | None = None


class TrainingJob(ApiModel):
    spec: TrainingJobSpec
    status: TrainingJobStatus = Field(default_factory=TrainingJobStatus)
