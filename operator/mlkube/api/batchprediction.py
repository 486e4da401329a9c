"""BatchPrediction: score a file (or a prefix of files) in the store with a ModelVersion, as one
Indexed Job of shards, and write one output part per shard plus a manifest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlkube.api.common import (
    DNS_LABEL,
    MESSAGE_LENGTH,
    NAME_LENGTH,
    OBJECT_NAME_LENGTH,
    TEXT_LENGTH,
    URI_LENGTH,
    ApiModel,
    Resources,
    StatusBase,
    api_config,
    cel,
    immutable,
)
from mlkube.api.modelversion import SHA256

STORE_URI = r"^(file|s3)://.+$"
MAX_FAILED_SHARDS = 16
"""Failed shards status names one by one (the manifest names every one)."""


class BatchInput(ApiModel):
    uri: str = Field(
        pattern=STORE_URI,
        max_length=URI_LENGTH,
        description="One Parquet or CSV file, or a prefix (a directory) of them, in this "
        "namespace's store: file:// or s3://. A prefix is read in file-name order; names "
        "starting with _ or . are skipped.",
    )
    format: Literal["Auto", "Csv", "Parquet"] = Field(
        default="Auto", description="Auto: by extension (.parquet or .pq, else CSV)."
    )


class BatchOutput(ApiModel):
    uri: str = Field(
        pattern=STORE_URI,
        max_length=URI_LENGTH,
        description="The directory, in this namespace's store, that receives part-NNNNN.parquet "
        "per shard and _manifest.json. Deleting the BatchPrediction never deletes it.",
    )
    id_column: str | None = Field(
        default=None,
        min_length=1,
        max_length=TEXT_LENGTH,
        description="An input column copied to the output beside the prediction; unset: every "
        "input column the model takes is copied.",
    )


class BatchPredictionSpec(ApiModel):
    model_config = api_config(
        cel(
            "has(self.modelVersion) != (has(self.model) && self.latestApproved)",
            "spec must set exactly one of modelVersion, or model with latestApproved: true",
        ),
        cel(
            "(has(self.modelVersion) ? self.modelVersion : '') =="
            " (has(oldSelf.modelVersion) ? oldSelf.modelVersion : '')"
            " && (has(self.model) ? self.model : '') == (has(oldSelf.model) ? oldSelf.model : '')"
            " && self.latestApproved == oldSelf.latestApproved",
            "modelVersion, model and latestApproved must not change after creation",
        ),
        cel(
            "!(self.output.uri.endsWith('/') ? self.output.uri : self.output.uri + '/')"
            ".startsWith(self.input.uri.endsWith('/') ? self.input.uri : self.input.uri + '/')"
            " && !(self.input.uri.endsWith('/') ? self.input.uri : self.input.uri + '/')"
            ".startsWith(self.output.uri.endsWith('/') ? self.output.uri : self.output.uri + '/')",
            "output.uri and input.uri must not lie inside one another",
            field_path=".output.uri",
        ),
    )

    model_version: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=NAME_LENGTH, description="In this namespace."
    )
    model: str | None = Field(default=None, pattern=DNS_LABEL, max_length=NAME_LENGTH)
    latest_approved: bool = Field(
        default=False,
        description="Score with the newest approved ModelVersion of `model` when the run starts "
        "(kept for the whole run).",
    )
    require_approval: bool = Field(
        default=True, description="Refuse a ModelVersion that is not approved."
    )
    input: BatchInput = Field(json_schema_extra=immutable("input"))
    output: BatchOutput = Field(json_schema_extra=immutable("output"))
    rows_per_shard: int = Field(
        default=1_000_000,
        ge=1,
        le=1_000_000_000,
        json_schema_extra=immutable("rowsPerShard"),
        description="Shard i scores rows [i*rowsPerShard, (i+1)*rowsPerShard) of the input "
        "files taken in order; one index of the Indexed Job each.",
    )
    parallelism: int = Field(
        default=1, ge=1, le=1000, description="Shards running at once (may change mid-run)."
    )
    backoff_limit_per_index: int = Field(
        default=2,
        ge=0,
        le=10,
        json_schema_extra=immutable("backoffLimitPerIndex"),
        description="Retries of one shard after a failure a retry may fix; a schema error in "
        "a shard's rows fails it at once, and never restarts the others.",
    )
    batch_size: int = Field(
        default=65536,
        ge=1,
        le=1_048_576,
        json_schema_extra=immutable("batchSize"),
        description="Rows read, checked, scored and written at a time: a shard's memory is "
        "bounded by this, not by rowsPerShard.",
    )
    resources: Resources | None = Field(
        default=None, json_schema_extra=immutable("resources"), description="Of each shard's pod."
    )
    image: str | None = Field(
        default=None,
        max_length=TEXT_LENGTH,
        json_schema_extra=immutable("image"),
        description="Runtime image; default: the operator's.",
    )
    active_deadline_seconds: int = Field(
        default=3600,
        ge=1,
        json_schema_extra=immutable("activeDeadlineSeconds"),
        description="The whole run (planning, shards, manifest) must end within this.",
    )


class ShardCounts(ApiModel):
    total: int = Field(default=0, ge=0)
    succeeded: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)


class ShardFailure(ApiModel):
    shard: int = Field(ge=0)
    reason: str = Field(max_length=TEXT_LENGTH)
    message: str = Field(default="", max_length=MESSAGE_LENGTH)


BatchPhase = Literal["Pending", "Planning", "Running", "Finalizing", "Succeeded", "Failed"]


class BatchPredictionStatus(StatusBase):
    phase: BatchPhase | None = None
    model_version: str | None = Field(
        default=None, max_length=OBJECT_NAME_LENGTH, description="The version scoring this run."
    )
    model_sha256: str | None = Field(default=None, pattern=SHA256)
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    job_name: str | None = Field(
        default=None, max_length=OBJECT_NAME_LENGTH, description="The Indexed Job of shards."
    )
    rows: int | None = Field(default=None, ge=0, description="Input rows, as planned.")
    rows_scored: int = Field(default=0, ge=0, description="Rows of the shards done.")
    shards: ShardCounts = Field(default_factory=ShardCounts)
    failed_shards: list[ShardFailure] = Field(
        default_factory=list,
        max_length=MAX_FAILED_SHARDS,
        description=f"The first {MAX_FAILED_SHARDS} failed shards and why.",
    )
    manifest_uri: str | None = Field(default=None, max_length=URI_LENGTH)
    progress: str | None = Field(default=None, max_length=MESSAGE_LENGTH)


class BatchPrediction(ApiModel):
    spec: BatchPredictionSpec
    status: BatchPredictionStatus = Field(default_factory=BatchPredictionStatus)
