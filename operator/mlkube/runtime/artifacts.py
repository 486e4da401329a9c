"""The artifact store: one layout (see :mod:`mlkube.layout`), any fsspec backend.

Each version directory holds model.joblib and its sha256 (recorded in the ModelVersion too),
schema.json (task, target, classes, input columns), metrics.json, lineage.json and
reference.parquet (a sample of the training inputs: the drift reference).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import joblib
from fsspec.implementations.local import LocalFileSystem

from mlkube.api.modelversion import Column, ColumnType
from mlkube.estimators import Task
from mlkube.layout import (
    DIGEST_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    SCHEMA_FILE,
    inference_log_uri,
    join,
    version_uri,
    with_scheme,
)

# The store's file names and paths are part of this module's interface too.
__all__ = [
    "DIGEST_FILE",
    "LINEAGE_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "NEEDED_FILES",
    "REFERENCE_FILE",
    "SCHEMA_FILE",
    "ArtifactError",
    "ModelSchema",
    "VerifyFailure",
    "inference_log_uri",
    "join",
    "load_schema",
    "load_verified_model",
    "read_bytes",
    "read_json",
    "save_model",
    "sha256_hex",
    "store_bytes",
    "verify_version",
    "version_uri",
    "write_bytes",
    "write_json",
]


class ArtifactError(Exception):
    """An artifact is missing, unreadable, or does not match its recorded digest."""


class VerifyFailure(ArtifactError):
    """Why a version directory cannot be served; `reason` becomes the condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


NEEDED_FILES = (SCHEMA_FILE, REFERENCE_FILE)
"""Besides model.joblib, what a server (the schema) and a drift check (the reference) read."""

FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def read_bytes(uri: str) -> bytes:
    try:
        with fsspec.open(with_scheme(uri), "rb") as f:
            data: bytes = f.read()
    except FileNotFoundError as e:
        raise ArtifactError(f"{uri} does not exist") from e
    return data


def write_bytes(uri: str, data: bytes) -> str:
    """`store_bytes`, returning the sha256 of what was written, which the ModelVersion records."""
    store_bytes(uri, data)
    return sha256_hex(data)


def store_bytes(uri: str, data: bytes) -> None:
    """Write through a temporary name and rename, so a reader never sees half a file. No digest:
    the inference log writes megabytes a second that nothing verifies."""
    fs, path = fsspec.core.url_to_fs(with_scheme(uri))
    if isinstance(fs, LocalFileSystem):
        # only here: object stores have no directories, and s3fs's makedirs probes (or
        # creates) the bucket, which a key scoped to a prefix may not do
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_json(uri: str, value: Any) -> str:
    return write_bytes(uri, json.dumps(value, indent=2, sort_keys=True).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelSchema:
    """What a server needs to know to validate a request and answer it."""

    task: Task
    target: str
    columns: list[Column]
    classes: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "target": self.target,
            "columns": [c.to_api() for c in self.columns],
            "classes": self.classes,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ModelSchema:
        return cls(
            task=value["task"],
            target=value["target"],
            columns=[Column.model_validate(c) for c in value["columns"]],
            classes=value.get("classes"),
        )

    def column_types(self) -> dict[str, ColumnType]:
        return {c.name: c.type for c in self.columns}


def save_model(directory: str, estimator: object) -> str:
    """Store the estimator and its digest; returns the sha256."""
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    data = buffer.getvalue()
    digest = sha256_hex(data)
    write_bytes(join(directory, MODEL_FILE), data)
    write_bytes(join(directory, DIGEST_FILE), digest.encode())
    return digest


def load_verified_model(directory: str, expected_sha256: str | None = None) -> object:
    """Load model.joblib only if its digest matches the recorded (or the given) sha256.

    joblib files are pickles: loading a tampered one runs arbitrary code, so the digest is checked
    on the bytes before anything is unpickled.
    """
    data = read_bytes(join(directory, MODEL_FILE))
    expected = expected_sha256 or read_bytes(join(directory, DIGEST_FILE)).decode().strip()
    actual = sha256_hex(data)
    if actual != expected:
        raise ArtifactError(
            f"{join(directory, MODEL_FILE)} does not match its recorded sha256 {expected}: "
            "refusing to load a tampered or corrupted artifact"
        )
    return joblib.load(io.BytesIO(data))


def verify_version(directory: str, model_sha256: str, files: Mapping[str, str]) -> int:
    """Check every file a server or a drift check needs is there and matches its digest.

    `files` are the digests the ModelVersion records by file name; the model's and the needed
    files are checked even when it records none. Returns the bytes checked. A message never
    holds an actual digest: a reader could learn the digest of an artifact they only guessed.
    """
    expected: dict[str, str | None] = {MODEL_FILE: model_sha256}
    expected |= {name: None for name in NEEDED_FILES} | dict(files)
    checked = 0
    for name, digest in expected.items():
        if not FILE_NAME.match(name):
            raise VerifyFailure("InvalidArtifact", f"{name!r} is not a file name in {directory}")
        uri = join(directory, name)
        try:
            data = read_bytes(uri)
        except ArtifactError as e:
            raise VerifyFailure(
                "ArtifactNotFound", f"{e}, and servers or drift checks need it"
            ) from e
        if digest is not None and sha256_hex(data) != digest:
            raise VerifyFailure(
                "DigestMismatch",
                f"{uri} does not match the sha256 the ModelVersion records ({digest})",
            )
        if name == SCHEMA_FILE:
            try:
                ModelSchema.from_json(json.loads(data))
            except (ValueError, KeyError, TypeError) as e:
                raise VerifyFailure(
                    "InvalidArtifact", f"{uri} is not an input schema a server can read: {e}"
                ) from e
        checked += len(data)
    return checked


def load_schema(directory: str) -> ModelSchema:
    return ModelSchema.from_json(read_json(join(directory, SCHEMA_FILE)))
