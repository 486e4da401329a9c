"""ModelVersion: the registry entry for one trained artifact."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mlkube.api.common import DNS_LABEL, ApiModel, StatusBase, immutable, unique_by
from mlkube.estimators import Task

SHA256 = r"^[a-f0-9]{64}$"

ColumnType = Literal["float", "int", "string", "bool"]


class Artifact(ApiModel):
    uri: str = Field(min_length=1, description="Directory holding model.joblib and its records.")
    sha256: str = Field(pattern=SHA256, description="Digest of model.joblib, verified before load.")
    files: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        json_schema_extra={"additionalProperties": {"type": "string", "pattern": SHA256}},
        description="sha256 of every other file a server or a drift check reads "
        "(schema.json, reference.parquet, ...), by file name; all verified before Ready.",
    )
    format: Literal["joblib"] = "joblib"


class Framework(ApiModel):
    name: Literal["scikit-learn"] = "scikit-learn"
    version: str
    python_version: str | None = None


class Column(ApiModel):
    name: str = Field(min_length=1)
    type: ColumnType
    nullable: bool = Field(
        default=False,
        description="The model was trained to take missing values here: a request may send null.",
    )


class LogWindow(ApiModel):
    """Which labelled production data a version was trained on (dataset.inferenceLog)."""

    deployment: str = Field(max_length=63)
    model_versions: list[str] = Field(default_factory=list, max_length=8)
    first: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Oldest row logged."
    )
    last: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Newest row logged."
    )
    rows: int = Field(default=0, ge=0, description="Logged rows joined with a label: trained on.")
    feedback_files: list[str] = Field(
        default_factory=list, max_length=8, description="Bulk feedback files read (the first 8)."
    )


class Lineage(ApiModel):
    training_job: str | None = None
    dataset_uri: str | None = None
    inference_log: LogWindow | None = None
    dataset_digest: str | None = None
    image: str | None = None
    estimator: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None


class Approval(ApiModel):
    approved: bool
    by: str = Field(min_length=1, description="Person or policy that decided.")
    at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    reason: str | None = None


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
    target: str | None = None
    classes: list[str] | None = Field(default=None, description="Class labels of a classifier.")
    metrics: dict[str, str] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    reference_sample_uri: str | None = Field(
        default=None, description="Parquet sample of the training inputs, the drift reference."
    )
    approval: Approval | None = None
    stage: Stage = "None"
    aliases: list[str] = Field(default_factory=list, max_length=16)


class ModelVersionStatus(StatusBase):
    phase: Literal["Pending", "Ready", "Invalid"] | None = None
    approved: bool | None = None
    verified_sha256: str | None = Field(default=None, pattern=SHA256)


class ModelVersion(ApiModel):
    spec: ModelVersionSpec
    status: ModelVersionStatus = Field(default_factory=ModelVersionStatus)


def model_version_name(model: str, version: int) -> str:
    """Deterministic object name, so retries never register a version twice."""
    return f"{model}-v{version}"
