"""Load a TrainingJob's dataset and check it before anything is fitted."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from decimal import Decimal

import fsspec
import pandas as pd
from sklearn import datasets as sk_datasets

from mlkube.api.modelversion import Column, ColumnType
from mlkube.api.trainingjob import Dataset, DataTests
from mlkube.estimators import BUILTIN_DATASETS
from mlkube.runtime.outcome import RunFailure


@dataclass(frozen=True)
class LoadedDataset:
    frame: pd.DataFrame
    digest: str
    """sha256 of the bytes read (or of a canonical CSV for built-in sets): lineage, not security."""


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _load_builtin(name: str) -> LoadedDataset:
    if name not in BUILTIN_DATASETS:
        raise RunFailure(
            "DatasetNotFound",
            f"dataset.uri: builtin:{name} is not a bundled dataset; "
            f"choose one of {', '.join(BUILTIN_DATASETS)}",
        )
    bunch = getattr(sk_datasets, f"load_{name}")(as_frame=True)
    frame: pd.DataFrame = bunch.frame.rename(columns=_snake)
    digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
    return LoadedDataset(frame=frame, digest=digest)


def _read_format(uri: str, declared: str) -> str:
    if declared != "Auto":
        return declared
    return "Parquet" if uri.lower().endswith((".parquet", ".pq")) else "Csv"


def load_dataset(dataset: Dataset) -> LoadedDataset:
    uri = dataset.uri
    if uri.startswith("builtin:"):
        return _load_builtin(uri.removeprefix("builtin:"))
    try:
        with fsspec.open(uri, "rb") as f:
            data: bytes = f.read()
    except (FileNotFoundError, OSError) as e:
        raise RunFailure("DatasetNotFound", f"dataset.uri: cannot read {uri}: {e}") from e
    fmt = _read_format(uri, dataset.format)
    try:
        frame = (
            pd.read_parquet(io.BytesIO(data)) if fmt == "Parquet" else pd.read_csv(io.BytesIO(data))
        )
    except Exception as e:  # a parser names what it could not read; keep its words
        raise RunFailure(
            "DataValidationFailed", f"dataset.uri: {uri} is not valid {fmt}: {e}"
        ) from e
    return LoadedDataset(frame=frame, digest=hashlib.sha256(data).hexdigest())


def column_type(series: pd.Series) -> ColumnType:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def check_data(
    frame: pd.DataFrame, target: str, features: list[str], tests: DataTests
) -> list[Column]:
    """Data tests before fitting; returns the input schema. Each failure names the column."""
    missing = [c for c in [target, *features] if c not in frame.columns]
    if missing:
        raise RunFailure(
            "DataValidationFailed",
            f"column {missing[0]!r} is not in the dataset (columns: {', '.join(map(str, frame.columns))})",
        )
    if len(frame) < tests.min_rows:
        raise RunFailure(
            "DataValidationFailed",
            f"dataTests.minRows: the dataset has {len(frame)} rows, fewer than {tests.min_rows}",
        )
    missing_percent = frame[[target, *features]].isna().mean() * 100
    worst = str(missing_percent.idxmax())
    if missing_percent[worst] > tests.max_missing_percent:
        raise RunFailure(
            "DataValidationFailed",
            f"column {worst!r} has {missing_percent[worst]:.1f}% missing values, more than "
            f"dataTests.maxMissingPercent={tests.max_missing_percent}",
        )
    for rule in tests.ranges:
        if rule.column not in frame.columns:
            raise RunFailure(
                "DataValidationFailed",
                f"dataTests.ranges: column {rule.column!r} is not in the dataset",
            )
        values = frame[rule.column]
        if not pd.api.types.is_numeric_dtype(values):
            raise RunFailure(
                "DataValidationFailed", f"column {rule.column!r} is not numeric, so it has no range"
            )
        low, high = values.min(), values.max()
        if rule.min is not None and Decimal(str(low)) < Decimal(rule.min):
            raise RunFailure(
                "DataValidationFailed",
                f"column {rule.column!r} has value {low} below min {rule.min}",
            )
        if rule.max is not None and Decimal(str(high)) > Decimal(rule.max):
            raise RunFailure(
                "DataValidationFailed",
                f"column {rule.column!r} has value {high} above max {rule.max}",
            )
    return [Column(name=str(c), type=column_type(frame[c])) for c in features]
