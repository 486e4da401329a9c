"""ModelVersion: the registry entry for one trained artifact."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mlkube.api.common import (
    DNS_LABEL,
    MAP_KEY_LENGTH,
    NAME_LENGTH,
    NUMBER_LENGTH,
    OBJECT_NAME_LENGTH,
    TEXT_LENGTH,
    URI_LENGTH,
    ApiModel,
    FreeForm,
    NumberStr,
    StatusBase,
    TextStr,
    UriStr,
    immutable,
    keys_at_most,
    unique_by,
)
from mlkube.api.deployment import HISTORY_LIMIT, HistoryEntry
from mlkube.estimators import Task

SHA256 = r"^[a-f0-9]{64}$"

ColumnType = Literal["float", "int", "string", "bool"]


class Artifact(ApiModel):
    uri: str = Field(
        min_length=1,
        max_length=URI_LENGTH,
        description="Directory holding model.joblib and its records.",
    )
    sha256: str = Field(pattern=SHA256, description="Digest of model.joblib, verified before load.")
    files: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        json_schema_extra={
            "additionalProperties": {"type": "string", "pattern": SHA256},
            **keys_at_most(MAP_KEY_LENGTH, "artifact.files"),
        },
        description="sha256 of every other file a server or a drift check reads "
        "(schema.json, reference.parquet, ...), by file name; all verified before Ready.",
    )
    format: Literal["joblib"] = "joblib"


class Framework(ApiModel):
    name: Literal["scikit-learn"] = "scikit-learn"
    version: str = Field(max_length=TEXT_LENGTH)
    python_version: str | None = Field(default=None, max_length=TEXT_LENGTH)


class Column(ApiModel):
    name: str = Field(min_length=1, max_length=TEXT_LENGTH)
    type: ColumnType
    nullable: bool = Field(
        default=False,
        description="The model was trained to take missing values here: a request may send null.",
    )


class LogWindow(ApiModel):
    """Which labelled production data a version was trained on (dataset.inferenceLog)."""

    deployment: str = Field(max_length=NAME_LENGTH)
    model_versions: list[Annotated[str, Field(max_length=OBJECT_NAME_LENGTH)]] = Field(
        default_factory=list, max_length=8
    )
    first: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Oldest row logged."
    )
    last: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Newest row logged."
    )
    rows: int = Field(default=0, ge=0, description="Logged rows joined with a label: trained on.")
    feedback_files: list[UriStr] = Field(
        default_factory=list, max_length=8, description="Bulk feedback files read (the first 8)."
    )


class MlflowRun(ApiModel):
    """The training's run in MLflow (its TrainingJob's spec.tracking.mlflow)."""

    tracking_uri: str = Field(max_length=URI_LENGTH)
    experiment_id: str = Field(max_length=TEXT_LENGTH)
    run_id: str = Field(max_length=TEXT_LENGTH)
    run_url: str | None = Field(default=None, max_length=2 * URI_LENGTH)
    registered_model: str | None = Field(
        default=None, max_length=TEXT_LENGTH, description="The model in MLflow's registry."
    )
    registered_version: str | None = Field(
        default=None, max_length=NUMBER_LENGTH, description="Its version in MLflow's registry."
    )
    credentials_secret: str | None = Field(
        default=None,
        max_length=OBJECT_NAME_LENGTH,
        description="The Secret in this namespace the trainer's credentials came from; a "
        "Deployment serving the version sets its MLflow aliases with the same.",
    )


class Lineage(ApiModel):
    training_job: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)
    dataset_uri: str | None = Field(
        default=None, max_length=2 * URI_LENGTH, description="dataset.uri, inferenceLog or both."
    )
    inference_log: LogWindow | None = None
    dataset_digest: str | None = Field(default=None, max_length=TEXT_LENGTH)
    image: str | None = Field(default=None, max_length=TEXT_LENGTH)
    estimator: str | None = Field(default=None, max_length=TEXT_LENGTH)
    params: FreeForm = Field(default_factory=dict)
    seed: int | None = None
    mlflow: MlflowRun | None = None


class Approval(ApiModel):
    approved: bool
    by: str = Field(
        min_length=1, max_length=TEXT_LENGTH, description="Person or policy that decided."
    )
    at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    reason: str | None = Field(default=None, max_length=TEXT_LENGTH)


Stage = Literal["None", "Staging", "Production", "Archived"]


class ModelVersionSpec(ApiModel):
    model: str = Field(pattern=DNS_LABEL, max_length=50, json_schema_extra=immutable("model"))
    version: int = Field(ge=1, json_schema_extra=immutable("version"))
    task: Task
    artifact: Artifact = Field(json_schema_extra=immutable("artifact"))
    framework: Framework
    input_schema: list[Column] = Field(
        min_length=1, max_length=1024, json_schema_extra=unique_by("name")
    )
    target: str | None = Field(default=None, max_length=TEXT_LENGTH)
    classes: list[TextStr] | None = Field(
        default=None, max_length=1024, description="Class labels of a classifier."
    )
    metrics: dict[str, NumberStr] = Field(
        default_factory=dict,
        max_length=64,
        json_schema_extra=keys_at_most(MAP_KEY_LENGTH, "metrics"),
    )
    lineage: Lineage = Field(default_factory=Lineage)
    reference_sample_uri: str | None = Field(
        default=None,
        max_length=URI_LENGTH,
        description="Parquet sample of the training inputs, the drift reference.",
    )
    approval: Approval | None = None
    stage: Stage = Field(
        default="None",
        description="A person's word on this version (MLflow's stage), kept as written: the "
        "operator never sets it. Where the version serves is status.servingIn.",
    )
    aliases: list[Annotated[str, Field(max_length=NAME_LENGTH)]] = Field(
        default_factory=list,
        max_length=16,
        description="A person's own names for this version; the operator keeps status.aliases.",
    )


ServingRole = Literal["Stable", "Canary", "Previous"]
SERVING_ROLES: tuple[ServingRole, ...] = ("Stable", "Canary", "Previous")
SERVING_IN_LIMIT = 64
AliasName = Literal["champion", "challenger"]


class ServingIn(ApiModel):
    """A Deployment serving this version, in which role, since when."""

    deployment: str = Field(max_length=NAME_LENGTH)
    role: ServingRole = Field(
        description="Stable: most traffic; Canary: being rolled out; Previous: the stable before, "
        "kept warm without traffic for an instant rollback."
    )
    since: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class Alias(ApiModel):
    """An alias in MLflow's sense (2.9+), kept in step with one Deployment."""

    name: AliasName = Field(
        description="champion: the Deployment's stable version; challenger: its canary."
    )
    deployment: str = Field(max_length=NAME_LENGTH)


class ServingRecord(HistoryEntry):
    """A span of this version's history, and the Deployment it served in."""

    deployment: str = Field(max_length=NAME_LENGTH)


class ModelVersionStatus(StatusBase):
    phase: Literal["Pending", "Ready", "Invalid"] | None = None
    approved: bool | None = None
    verified_sha256: str | None = Field(default=None, pattern=SHA256)
    serving_in: list[ServingIn] | None = Field(
        default=None,
        max_length=SERVING_IN_LIMIT,
        description="The Deployments serving this version now (the first 64 by name), taken "
        "from their status; unset: none.",
    )
    role: str | None = Field(
        default=None,
        max_length=NAME_LENGTH,
        description="The roles of servingIn, Stable before Canary before Previous (`kubectl get`).",
    )
    aliases: list[Alias] | None = Field(
        default=None,
        max_length=SERVING_IN_LIMIT,
        description="champion and challenger per Deployment, following servingIn.",
    )
    history: list[ServingRecord] | None = Field(
        default=None,
        max_length=HISTORY_LIMIT,
        description="Where and when this version served and why, oldest first: the Deployments' "
        "histories of it, kept here after a Deployment is deleted (at most 50 entries); unset "
        "until it first serves.",
    )


class ModelVersion(ApiModel):
    spec: ModelVersionSpec
    status: ModelVersionStatus = Field(default_factory=ModelVersionStatus)


def model_version_name(model: str, version: int) -> str:
    """Deterministic object name, so retries never register a version twice."""
    return f"{model}-v{version}"
