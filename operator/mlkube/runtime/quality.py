"""Live model quality: logged predictions joined with ground truth, per model version.

Inputs follow :mod:`mlkube.layout`: one model version's window of the inference log
(``<log>/<version>/``) and the feedback, which is the Deployment's ``_feedback/`` segments (labels
posted to ``/feedback``, each with the time it came) plus bulk files named in
``spec.performance.feedbackUris`` (labels from a warehouse, without a time).

- Feedback: the last write per request id wins, ordered by arrival time, then by file and row
  order. Bulk rows have no arrival time: they count as older than every posted label (a label
  posted to ``/feedback`` corrects the warehouse, never the reverse) and as in time.
- Join: a logged row is labelled when its request id has a label that came at most
  ``labelDelaySeconds`` after the prediction (a late label is not joined: it may carry what
  happened after the fact). A row younger than the delay without a label is pending, not
  unlabelled. Labels and predictions are compared in the representation of the model's classes
  (``1``, ``1.0``, ``"1"`` and ``true`` name one class when the classes are numbers).
- Metrics, vectorised, each equal to scikit-learn's: accuracy (``accuracy_score``), macro F1
  (``f1_score(average="macro")``), ROC AUC (``roc_auc_score``; multiclass one-vs-rest, macro),
  RMSE (``root_mean_squared_error``), MAE (``mean_absolute_error``).
- Estimate before labels: NannyML's confidence-based performance estimation (CBPE, "Estimation
  of Performance of the Monitored Model" in NannyML's docs, how_it_works/performance_estimation)
  from the logged probabilities, after the calibration fitted on the held-out split at training
  time (:func:`fit_calibration`). It holds under covariate shift within the training data's range;
  it cannot see concept drift (P(y|x) changed) nor judge inputs the training data never covered,
  which is why the estimate's gap to the realised metric on the labelled rows is reported too.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import fsspec
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import KFold, StratifiedKFold

from mlkube.api.driftmonitor import (
    HIGHER_IS_BETTER,
    OFFLINE_METRIC_KEYS,
    DriftMonitorSpec,
    Performance,
    PerformanceMetric,
)
from mlkube.estimators import Task
from mlkube.layout import (
    CALIBRATION_FILE,
    FEEDBACK_LABEL_COLUMN,
    FEEDBACK_REQUEST_ID_COLUMN,
    LOG_CLASSES_METADATA,
    LOG_PREDICTION_COLUMN,
    LOG_PROBABILITIES_COLUMN,
    LOG_REQUEST_ID_COLUMN,
    LOG_TS_COLUMN,
    METRICS_FILE,
    feedback_uri,
    join,
)
from mlkube.runtime import artifacts
from mlkube.runtime.log_window import read_version_window
from mlkube.runtime.outcome import one_line

RESULT_BYTES = 1400
"""The compact result shares a 4 KiB termination message with the drift result."""
TOP_SLICES = 20
RESULT_SLICES = 5
SLICE_MIN_ROWS = 10
"""A slice with fewer labelled rows is listed but never the worst: one wrong answer is not bias."""
ECE_BINS = 10
CALIBRATION_FOLDS = 3
TEXT_LIMIT = 64
"""Characters of a slice value or reason kept in the result."""

Verdict = Literal["Healthy", "Degraded", "InsufficientLabels"]
Floats = npt.NDArray[np.float64]
Codes = npt.NDArray[np.int64]

_FLOAT_TEXT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_BOOL_WORDS = {"true": 1.0, "false": 0.0}
_BULK_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


class QualityError(ValueError):
    """Feedback or configuration a user must fix; the message names the file, column or field."""


# --- feedback ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feedback:
    """One label per request id: ``requestId`` (string), ``label``, ``_mlkube_ts`` (int64 epoch
    ms when it came, null for bulk rows) and one float64 column per named outcome."""

    table: pa.Table
    duplicates: int
    """Labels replaced by a later write for the same request id."""
    files: list[str]


def read_feedback(
    segments_uri: str | None, bulk_uris: Sequence[str] = (), outcomes: Sequence[str] = ()
) -> Feedback:
    """The feedback segments under `segments_uri` (``feedback_uri(log_uri)``; missing is none)
    and the bulk files (a CSV or Parquet file, or a directory or key prefix of them, read in
    name order), last write winning per request id.

    Rows without a request id or label are skipped. Labels of different types across files are
    unified: integers stay int64, numbers become float64, anything else text. Raises QualityError
    naming the file for an unreadable file, a missing ``requestId`` or ``label`` column, or an
    outcome column that is not numeric; OSError for the store.
    """
    files: list[tuple[str, bool]] = []
    for uri in bulk_uris:
        files += [(path, False) for path in _bulk_files(uri)]
    if segments_uri is not None:
        fs, directory = fsspec.core.url_to_fs(join(segments_uri))
        if fs.isdir(directory):
            segments = sorted(p for p in fs.ls(directory, detail=False) if p.endswith(".parquet"))
            files += [(fs.unstrip_protocol(p), True) for p in segments]
    tables = [_read_feedback_file(uri, timed, outcomes) for uri, timed in files]
    return merge_feedback(tables, [uri for uri, _ in files], outcomes)


def merge_feedback(
    tables: Sequence[pa.Table], files: Sequence[str] = (), outcomes: Sequence[str] = ()
) -> Feedback:
    """Feedback tables (``requestId``, ``label``, ``_mlkube_ts`` null for bulk rows, outcomes)
    in write order, as one label per request id: the latest ``_mlkube_ts`` wins, bulk rows
    before every timed one, then the later table and row. Label types are unified first."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return Feedback(_empty_feedback(outcomes), 0, list(files))
    labels = _unify_labels([_plain(t.column(FEEDBACK_LABEL_COLUMN)) for t in tables])
    tables = [
        t.set_column(t.schema.get_field_index(FEEDBACK_LABEL_COLUMN), FEEDBACK_LABEL_COLUMN, label)
        for t, label in zip(tables, labels, strict=True)
    ]
    table = pa.concat_tables(tables, promote_options="permissive")
    latest = _last_writes(table)
    return Feedback(table.take(latest), table.num_rows - len(latest), list(files))


def _bulk_files(uri: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(join(uri))
    if fs.isfile(path):
        return [uri]
    if fs.isdir(path):
        found = fs.find(path)
    else:  # a key prefix: the files under its parent whose names start with it
        found = [p for p in fs.find(path.rsplit("/", 1)[0]) if p.startswith(path)]
    paths = sorted(p for p in found if p.lower().endswith(_BULK_SUFFIXES))
    if not paths:
        raise QualityError(f"feedback URI {uri} matches no CSV or Parquet file")
    return [fs.unstrip_protocol(p) for p in paths]


def _read_feedback_file(uri: str, timed: bool, outcomes: Sequence[str]) -> pa.Table:
    try:
        with fsspec.open(uri, "rb", compression="infer") as f:
            if ".csv" in uri.lower().rsplit("/", 1)[-1]:
                table = pacsv.read_csv(
                    f,
                    convert_options=pacsv.ConvertOptions(
                        column_types={FEEDBACK_REQUEST_ID_COLUMN: pa.string()}
                    ),
                )
            else:
                table = pq.read_table(f)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise QualityError(f"feedback file {uri} is not readable CSV or Parquet: {e}") from e
    needed = [
        FEEDBACK_REQUEST_ID_COLUMN,
        FEEDBACK_LABEL_COLUMN,
        *([LOG_TS_COLUMN] if timed else []),
    ]
    for name in needed:
        if name not in table.column_names:
            raise QualityError(
                f"feedback file {uri} has no {name!r} column (columns: "
                f"{', '.join(table.column_names[:10]) or 'none'})"
            )
    rows = table.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        FEEDBACK_REQUEST_ID_COLUMN: _plain(table.column(FEEDBACK_REQUEST_ID_COLUMN), pa.string()),
        FEEDBACK_LABEL_COLUMN: _plain(table.column(FEEDBACK_LABEL_COLUMN)),
        LOG_TS_COLUMN: (
            pc.cast(table.column(LOG_TS_COLUMN), pa.int64())
            if timed
            else pa.nulls(rows, pa.int64())
        ),
    }
    for name in outcomes:
        if name not in table.column_names:
            columns[name] = pa.nulls(rows, pa.float64())
            continue
        try:
            columns[name] = pc.cast(_plain(table.column(name)), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise QualityError(
                f"feedback file {uri}: outcome column {name!r} is not numeric: {e}"
            ) from e
    result = pa.table(columns)
    keep = pc.and_(
        result.column(FEEDBACK_REQUEST_ID_COLUMN).is_valid(),
        result.column(FEEDBACK_LABEL_COLUMN).is_valid(),
    )
    return result.filter(keep)


def _empty_feedback(outcomes: Sequence[str]) -> pa.Table:
    return pa.table(
        {
            FEEDBACK_REQUEST_ID_COLUMN: pa.array([], pa.string()),
            FEEDBACK_LABEL_COLUMN: pa.array([], pa.string()),
            LOG_TS_COLUMN: pa.array([], pa.int64()),
            **{name: pa.array([], pa.float64()) for name in outcomes},
        }
    )


def _plain(values: pa.Array | pa.ChunkedArray, to: pa.DataType | None = None) -> pa.Array:
    """One contiguous array, dictionary-decoded (and cast to `to`)."""
    if pa.types.is_dictionary(values.type):
        values = pc.cast(values, values.type.value_type)
    if to is not None and values.type != to:
        values = pc.cast(values, to)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _unify_labels(labels: list[pa.Array]) -> list[pa.Array]:
    types = {a.type for a in labels}
    if len(types) == 1:
        return labels
    if all(pa.types.is_integer(t) for t in types):
        return [pc.cast(a, pa.int64()) for a in labels]
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
        return [pc.cast(a, pa.float64()) for a in labels]
    return [_as_text(a) for a in labels]


def _last_writes(table: pa.Table) -> Codes:
    """Row positions of each request id's last write: latest ``_mlkube_ts`` (bulk rows, with
    none, before every timed one), then the latest file and row."""
    ids = pc.dictionary_encode(table.column(FEEDBACK_REQUEST_ID_COLUMN)).combine_chunks()
    id_codes = ids.indices.to_numpy()
    arrived = pc.fill_null(table.column(LOG_TS_COLUMN), np.iinfo(np.int64).min).to_numpy()
    order = np.lexsort((np.arange(table.num_rows), arrived, id_codes))
    sorted_ids = id_codes[order]
    last = np.append(sorted_ids[1:] != sorted_ids[:-1], True)
    latest: Codes = np.sort(order[last]).astype(np.int64)
    return latest


# --- the log -----------------------------------------------------------------------------------


def log_versions(log_uri: str) -> list[str]:
    """The model versions with a directory in a Deployment's inference log, by name."""
    fs, directory = fsspec.core.url_to_fs(join(log_uri))
    try:
        entries = fs.ls(directory, detail=True)
    except FileNotFoundError:
        return []
    names = [
        str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
    ]
    return sorted(n for n in names if not n.startswith("_"))


def logged_request_ids(log_uri: str) -> pa.Array:
    """Every request id in the log, all versions, all retained segments (that column only)."""
    arrays = [
        _plain(
            read_version_window(log_uri, v, None, None, [LOG_REQUEST_ID_COLUMN]).column(0),
            pa.string(),
        )
        for v in log_versions(log_uri)
    ]
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


# --- classes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Labels and predictions as positions in `classes` (the model's order, which is the order
    of the logged probabilities); values outside the classes get positions from
    ``len(classes)`` on, so they count as wrong answers rather than vanish."""

    truth: Codes
    predicted: Codes
    classes: list[Any]
    size: int
    """The number of distinct positions used (at least ``len(classes)``)."""


def encode_classes(
    labels: pa.Array | npt.ArrayLike,
    predictions: pa.Array | npt.ArrayLike,
    classes: Sequence[Any] | None = None,
) -> Encoded:
    """Positions of `labels` and `predictions` in `classes` (default: their sorted union).

    When every class reads as a number (``0``, ``"1"``, ``2.0``, ``true``), all three are compared
    as numbers, so a bulk CSV's int64 labels match the classes ``"0"``, ``"1"`` and the reverse;
    otherwise as text (an integer 3 is ``"3"``, an integral float 3.0 also ``"3"``).
    """
    label_array = _plain(labels if isinstance(labels, pa.Array) else pa.array(labels))
    predicted_array = _plain(
        predictions if isinstance(predictions, pa.Array) else pa.array(predictions)
    )
    class_numbers = None if classes is None else _class_numbers(classes)
    if classes is None:
        numeric = _is_numeric(predicted_array.type) and _is_numeric(label_array.type)
    else:
        numeric = class_numbers is not None
    keys = pa.concat_arrays([_as_key(label_array, numeric), _as_key(predicted_array, numeric)])
    if classes is None:
        class_keys = pc.unique(keys.drop_null()).sort()
        class_list: list[Any] = class_keys.to_pylist()
    else:
        class_keys = pa.array(class_numbers) if numeric else pa.array([str(c) for c in classes])
        class_list = list(classes)
    positions = pc.index_in(keys, value_set=class_keys)
    outside = positions.is_null()
    size = len(class_keys)
    codes = positions.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pc.any(outside).as_py():
        unknown = pc.filter(keys, outside)
        extra = pc.unique(unknown)
        codes[outside.to_numpy(zero_copy_only=False)] = size + pc.index_in(
            unknown, value_set=extra
        ).to_numpy(zero_copy_only=False)
        size += len(extra)
    n = len(label_array)
    return Encoded(codes[:n], codes[n:], class_list, size)


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )


def _class_numbers(classes: Sequence[Any]) -> list[float] | None:
    numbers = []
    for c in classes:
        if isinstance(c, bool | int | float):
            numbers.append(float(c))
        elif isinstance(c, str) and c.strip().lower() in _BOOL_WORDS:
            numbers.append(_BOOL_WORDS[c.strip().lower()])
        elif isinstance(c, str) and _FLOAT_TEXT.match(c):
            numbers.append(float(c))
        else:
            return None
    return numbers


def _as_key(values: pa.Array, numeric: bool) -> pa.Array:
    if not numeric:
        return _as_text(values)
    if _is_numeric(values.type):
        return pc.cast(values, pa.float64())
    text = pc.utf8_lower(pc.utf8_trim_whitespace(_as_text(values)))
    text = pc.if_else(pc.equal(text, "true"), "1", pc.if_else(pc.equal(text, "false"), "0", text))
    numbers = pc.if_else(pc.match_substring_regex(text, _FLOAT_TEXT.pattern), text, None)
    return pc.cast(numbers, pa.float64())


def _as_text(values: pa.Array) -> pa.Array:
    if pa.types.is_floating(values.type):
        floats = values.to_numpy(zero_copy_only=False)
        finite = floats[np.isfinite(floats)]
        if np.array_equal(finite, np.floor(finite)) and np.all(np.abs(finite) < 2**63):
            return pc.cast(pc.cast(values, pa.int64(), safe=False), pa.string())
    return pc.cast(values, pa.string())


# --- metrics -----------------------------------------------------------------------------------


def confusion_matrix(truth: Codes, predicted: Codes, size: int) -> Codes:
    """(size, size) counts, rows the truth, columns the prediction (one bincount)."""
    counts: Codes = np.bincount(truth * size + predicted, minlength=size * size).reshape(size, size)
    return counts


def accuracy(truth: Codes, predicted: Codes) -> float | None:
    """sklearn.metrics.accuracy_score; None without rows."""
    return float(np.mean(truth == predicted)) if truth.size else None


def macro_f1(truth: Codes, predicted: Codes, size: int) -> float | None:
    """sklearn.metrics.f1_score(average="macro"): 2TP / (2TP + FP + FN) per class present in the
    labels or the predictions, averaged; None without rows."""
    if not truth.size:
        return None
    matrix = confusion_matrix(truth, predicted, size)
    per_class_rows = matrix.sum(axis=1) + matrix.sum(axis=0)  # 2TP + FP + FN
    present = per_class_rows > 0
    return float(np.mean(2 * np.diag(matrix)[present] / per_class_rows[present]))


def weighted_roc_auc(scores: Floats, positive: Floats, negative: Floats) -> float | None:
    """The area under the ROC curve where each row counts `positive` times as a positive and
    `negative` times as a negative: P(score of a positive > of a negative) + P(tie) / 2, from one
    sort of the scores. With 0/1 weights it is sklearn.metrics.roc_auc_score; with p and 1 - p it
    is CBPE's expected ROC AUC. None when either side weighs nothing."""
    values, groups = np.unique(scores, return_inverse=True)
    pos = np.bincount(groups, weights=positive, minlength=values.size)
    neg = np.bincount(groups, weights=negative, minlength=values.size)
    total_pos, total_neg = float(pos.sum()), float(neg.sum())
    if total_pos <= 0 or total_neg <= 0:
        return None
    below = np.cumsum(neg) - neg
    return float(np.dot(pos, below + neg / 2) / (total_pos * total_neg))


def roc_auc(truth: Codes, probabilities: Floats) -> float | None:
    """sklearn.metrics.roc_auc_score: binary from the probability of the second class; with
    more classes one-vs-rest, macro-averaged (``multi_class="ovr", average="macro"``) over the
    classes present in the labels (scikit-learn refuses when one is absent). None with fewer
    than two classes in the labels, where ROC AUC is undefined."""
    classes = probabilities.shape[1]
    if classes == 2:
        positive = (truth == 1).astype(np.float64)
        return weighted_roc_auc(probabilities[:, 1], positive, 1 - positive)
    present = np.unique(truth[truth < classes])
    if present.size < 2:
        return None
    areas = []
    for k in present:  # one pass per class, never per row
        positive = (truth == k).astype(np.float64)
        areas.append(weighted_roc_auc(probabilities[:, k], positive, 1 - positive))
    return float(np.mean([a for a in areas if a is not None]))


def rmse(truth: Floats, predicted: Floats) -> float | None:
    """sklearn.metrics.root_mean_squared_error; None without rows."""
    return float(np.sqrt(np.mean((truth - predicted) ** 2))) if truth.size else None


def mae(truth: Floats, predicted: Floats) -> float | None:
    """sklearn.metrics.mean_absolute_error; None without rows."""
    return float(np.mean(np.abs(truth - predicted))) if truth.size else None


# --- CBPE --------------------------------------------------------------------------------------


def estimate_performance(probabilities: Floats, predicted: Codes) -> dict[str, float | None]:
    """NannyML's CBPE from calibrated probabilities (rows, classes) and predicted positions:

    - accuracy: the mean probability of the predicted class;
    - F1: per class, expected TP = the sum of p_k over rows predicted k, FP = their count - TP,
      FN = the sum of p_k over the other rows; 2TP / (2TP + FP + FN), macro over the classes with
      any expected or predicted member;
    - ROC AUC: each row a positive of weight p_k and a negative of weight 1 - p_k, whose ROC
      area equals NannyML's sweep over thresholds (binary: the second class; else one-vs-rest
      macro).

    Predictions outside the classes count as wrong. An empty window estimates nothing (None).
    """
    rows, classes = probabilities.shape
    if rows == 0:
        return {"accuracy": None, "f1": None, "roc_auc": None}
    known = predicted < classes
    chosen = np.where(known, probabilities[np.arange(rows), np.minimum(predicted, classes - 1)], 0)
    true_positive = np.bincount(predicted[known], weights=chosen[known], minlength=classes)
    predicted_count = np.bincount(predicted[known], minlength=classes)
    denominator = predicted_count + probabilities.sum(axis=0)  # 2TP + FP + FN
    present = denominator > 0
    if classes == 2:
        auc = weighted_roc_auc(probabilities[:, 1], probabilities[:, 1], probabilities[:, 0])
    else:
        areas = [
            weighted_roc_auc(probabilities[:, k], probabilities[:, k], 1 - probabilities[:, k])
            for k in range(classes)
        ]
        defined = [a for a in areas if a is not None]
        auc = float(np.mean(defined)) if defined else None
    return {
        "accuracy": float(np.mean(chosen)),
        "f1": float(np.mean(2 * true_positive[present] / denominator[present])),
        "roc_auc": auc,
    }


# --- calibration -------------------------------------------------------------------------------


def expected_calibration_error(
    probabilities: Floats, outcomes: npt.NDArray[np.bool_], bins: int = ECE_BINS
) -> float:
    """ECE with `bins` equal-width bins over [0, 1] (Naeini et al. 2015, as NannyML cites):
    the sum over bins of (rows in bin / rows) * |share of positives - mean probability|."""
    which = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    gaps = np.abs(
        np.bincount(which, weights=outcomes.astype(np.float64), minlength=bins)
        - np.bincount(which, weights=probabilities, minlength=bins)
    )
    return float(gaps.sum() / max(count.sum(), 1))


@dataclass(frozen=True)
class Calibration:
    """Isotonic maps for some classes' probabilities, applied with ``np.interp`` on the knots
    (as ``IsotonicRegression(out_of_bounds="clip").predict``), then each row renormalised to sum
    to 1. Binary models map the second class's probability; the first is its complement."""

    classes: list[Any]
    knots: dict[int, tuple[list[float], list[float]]]
    """Class position -> (x, y) knots."""

    def apply(self, probabilities: Floats) -> Floats:
        """(rows, classes) -> (rows, classes); a row whose mapped probabilities are all 0 keeps
        the raw ones."""
        mapped = probabilities.copy()
        for k, (x, y) in self.knots.items():
            mapped[:, k] = np.interp(probabilities[:, k], x, y)
        if len(self.classes) == 2:
            mapped[:, 0] = 1 - mapped[:, 1]
            return mapped
        total = mapped.sum(axis=1, keepdims=True)
        return np.where(total > 0, mapped / np.where(total > 0, total, 1), probabilities)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "isotonic",
            "classes": self.classes,
            "knots": {str(k): {"x": x, "y": y} for k, (x, y) in self.knots.items()},
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Calibration:
        return cls(
            classes=list(value["classes"]),
            knots={int(k): (list(v["x"]), list(v["y"])) for k, v in value["knots"].items()},
        )


def fit_calibration(
    classes: Sequence[Any], probabilities: Floats, truth: Codes, seed: int = 0
) -> Calibration | None:
    """Per class, isotonic regression of "is this class" on its probability, fitted on the
    held-out split (never on training data, which would bias it), kept only where it lowers the
    expected calibration error: as NannyML does, the mean ECE over 3 stratified folds (fitted on
    two, measured on the third) with and without it. Binary models calibrate the second class.
    None when no class gains. `truth` holds each row's position in `classes`."""
    count = len(classes)
    if probabilities.shape[0] < 2 * CALIBRATION_FOLDS:
        return None
    _, per_class = np.unique(truth, return_counts=True)
    splitter: StratifiedKFold | KFold = (
        StratifiedKFold(CALIBRATION_FOLDS, shuffle=True, random_state=seed)
        if per_class.min() >= CALIBRATION_FOLDS
        else KFold(CALIBRATION_FOLDS, shuffle=True, random_state=seed)
    )
    folds = list(splitter.split(probabilities, truth))
    knots: dict[int, tuple[list[float], list[float]]] = {}
    for k in [1] if count == 2 else range(count):
        scores, outcome = probabilities[:, k], truth == k
        raw = calibrated = 0.0
        for fit, measure in folds:
            isotonic = _isotonic(scores[fit], outcome[fit])
            mapped = np.interp(scores[measure], *isotonic)
            raw += expected_calibration_error(scores[measure], outcome[measure])
            calibrated += expected_calibration_error(mapped, outcome[measure])
        if calibrated < raw:
            knots[k] = _isotonic(scores, outcome)
    return Calibration(list(classes), knots) if knots else None


def _isotonic(scores: Floats, outcome: npt.NDArray[np.bool_]) -> tuple[list[float], list[float]]:
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        scores, outcome.astype(np.float64)
    )
    return fitted.X_thresholds_.tolist(), fitted.y_thresholds_.tolist()


# --- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceQuality:
    value: Any
    rows: int
    """Labelled rows in the slice."""
    metric: float | None


@dataclass(frozen=True)
class Slices:
    column: str
    slices: list[SliceQuality] = field(default_factory=list)
    """The largest TOP_SLICES slices, largest first."""
    worst: SliceQuality | None = None
    gap: float | None = None
    """How much worse the worst slice is than the whole (always >= 0 is worse)."""
    reason: str | None = None
    """Why there are no slices (the column is not logged)."""


@dataclass(frozen=True)
class Counts:
    rows: int
    """Logged rows in the window."""
    labelled: int
    pending: int
    """Unlabelled rows younger than labelDelaySeconds: their labels may still come."""
    late: int
    """Rows whose (last) label came after labelDelaySeconds: not joined."""
    duplicates: int
    unknown_ids: int
    """Feedback ids that match no logged row of any version."""

    @property
    def labelled_share(self) -> float | None:
        """Labelled rows among those whose label is due or in (all but the pending)."""
        due = self.rows - self.pending
        return self.labelled / due if due else None


@dataclass(frozen=True)
class PerformanceReport:
    model_version: str
    metric: PerformanceMetric
    verdict: Verdict
    value: float | None
    """The metric on the labelled rows."""
    offline: float | None
    """The ModelVersion's figure on its held-out split."""
    counts: Counts
    metrics: dict[str, float | None]
    """accuracy, f1, roc_auc (classifiers) or rmse, mae (regressors) on the labelled rows."""
    estimated: dict[str, float | None] = field(default_factory=dict)
    """CBPE over the whole window (classifiers with logged probabilities)."""
    estimate_gap: float | None = None
    """The realised metric minus its CBPE estimate on the same labelled rows: far from 0, the
    estimate cannot be trusted (concept drift, or inputs the training data never covered)."""
    outcomes: dict[str, tuple[str, float | None, int]] = field(default_factory=dict)
    """name -> (Sum or Mean, value, labelled rows with the outcome)."""
    slices: Slices | None = None
    reason: str | None = None

    def to_result(self, max_bytes: int = RESULT_BYTES) -> dict[str, Any]:
        """Compact JSON for the termination message: figures as strings of 6 significant digits,
        the RESULT_SLICES worst slices; outcomes and slices that do not fit in `max_bytes` are
        left out and counted in ``outcomesOmitted`` / ``slicesOmitted``."""
        c = self.counts
        result: dict[str, Any] = {
            "modelVersion": self.model_version,
            "metric": self.metric,
            "verdict": self.verdict,
            "value": _figure(self.value),
            "offline": _figure(self.offline),
            "rows": c.rows,
            "labelled": c.labelled,
            "labelledShare": _figure(c.labelled_share),
            "pending": c.pending,
            "late": c.late,
            "duplicates": c.duplicates,
            "unknownIds": c.unknown_ids,
            "metrics": _figures(self.metrics),
            "estimated": _figures(self.estimated),
            "estimateGap": _figure(self.estimate_gap),
            "reason": None if self.reason is None else self.reason[: 4 * TEXT_LIMIT],
        }
        result = {k: v for k, v in result.items() if v is not None and v != {}}
        if self.slices is not None:
            result["slices"] = self._slices_result()
            if len(_compact(result)) > max_bytes:
                result["slices"] = {"by": result["slices"]["by"], "slicesOmitted": True}
        for name, (aggregate, value, rows) in self.outcomes.items():
            entry = {aggregate.lower(): _figure(value), "rows": rows}
            outcomes = result.setdefault("outcomes", {})
            outcomes[name] = entry
            if len(_compact(result)) > max_bytes - len(',"outcomesOmitted":99'):
                del outcomes[name]
                result["outcomesOmitted"] = len(self.outcomes) - len(outcomes)
                if not outcomes:
                    del result["outcomes"]
                break
        return result

    def _slices_result(self) -> dict[str, Any]:
        assert self.slices is not None
        s = self.slices
        shown: dict[str, Any] = {"by": s.column[:TEXT_LIMIT]}
        if s.reason is not None:
            shown["reason"] = s.reason[: 2 * TEXT_LIMIT]
            return shown
        direction = _direction(self.metric)
        ranked = sorted(
            ((direction * x.metric, x) for x in s.slices if x.metric is not None),
            key=lambda pair: pair[0],
        )
        shown["gap"] = _figure(s.gap)
        shown["worst"] = [
            [_slice_text(x.value), _figure(x.metric), x.rows] for _, x in ranked[:RESULT_SLICES]
        ]
        return shown


def _figure(value: float | None) -> str | None:
    return None if value is None else f"{value:.6g}"


def _figures(values: dict[str, float | None]) -> dict[str, str]:
    return {_camel(k): f"{v:.6g}" for k, v in values.items() if v is not None}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _slice_text(value: Any) -> Any:
    return value[:TEXT_LIMIT] if isinstance(value, str) else value


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


# --- one version's quality ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Joined:
    """The window's labelled rows (positions into the window) and their labels."""

    rows: Codes
    labels: pa.Table
    counts: Counts


def _join(
    window: pa.Table,
    feedback: Feedback,
    logged_ids: pa.Array,
    label_delay_seconds: int,
    now: float,
) -> _Joined:
    ids = _plain(window.column(LOG_REQUEST_ID_COLUMN), pa.string())
    predicted_at = window.column(LOG_TS_COLUMN).to_numpy()
    label_ids = feedback.table.column(FEEDBACK_REQUEST_ID_COLUMN)
    match = pc.index_in(ids, value_set=label_ids)
    has_label = match.is_valid().to_numpy(zero_copy_only=False)
    which = match.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    came_column = feedback.table.column(LOG_TS_COLUMN)
    came = pc.fill_null(came_column, 0).to_numpy()
    timed = came_column.is_valid().to_numpy(zero_copy_only=False)  # bulk labels are never late
    delay_ms = label_delay_seconds * 1000
    late = np.zeros(window.num_rows, dtype=bool)
    if came.size:
        late = has_label & timed[which] & (came[which] - predicted_at > delay_ms)
    labelled = has_label & ~late
    young = predicted_at > int(now * 1000) - delay_ms
    unknown = pc.invert(pc.is_in(label_ids, value_set=logged_ids))
    rows = np.flatnonzero(labelled).astype(np.int64)
    counts = Counts(
        rows=window.num_rows,
        labelled=int(rows.size),
        pending=int(np.sum(young & ~labelled)),
        late=int(late.sum()),
        duplicates=feedback.duplicates,
        unknown_ids=int(pc.sum(unknown).as_py() or 0),
    )
    return _Joined(rows, feedback.table.take(which[rows]), counts)


_EMPTY_WINDOW = pa.table(
    {
        LOG_REQUEST_ID_COLUMN: pa.array([], pa.string()),
        LOG_PREDICTION_COLUMN: pa.array([], pa.string()),
        LOG_TS_COLUMN: pa.array([], pa.int64()),
    }
)


def _probabilities(window: pa.Table) -> tuple[Floats, list[Any]] | None:
    """The logged probabilities (rows, classes) and the classes from the schema metadata."""
    if LOG_PROBABILITIES_COLUMN not in window.column_names:
        return None
    metadata = window.schema.metadata or {}
    if LOG_CLASSES_METADATA not in metadata:
        return None
    classes: list[Any] = json.loads(metadata[LOG_CLASSES_METADATA])
    column = window.column(LOG_PROBABILITIES_COLUMN).combine_chunks()
    if column.null_count:
        raise QualityError(f"{column.null_count} logged rows have no {LOG_PROBABILITIES_COLUMN}")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return values.reshape(len(column), len(classes)), classes


def _direction(metric: PerformanceMetric) -> float:
    """1 where higher is better (Accuracy, F1, RocAuc), -1 where lower is (Rmse, Mae)."""
    return 1.0 if metric in HIGHER_IS_BETTER else -1.0


def default_metric(task: Task) -> PerformanceMetric:
    return "Accuracy" if task == "classification" else "Rmse"


def _metric_value(
    metric: PerformanceMetric,
    truth: Any,
    predicted: Any,
    probabilities: Floats | None,
    size: int,
) -> float | None:
    if metric == "Accuracy":
        return accuracy(truth, predicted)
    if metric == "F1":
        return macro_f1(truth, predicted, size)
    if metric == "RocAuc":
        return None if probabilities is None or not truth.size else roc_auc(truth, probabilities)
    if metric == "Rmse":
        return rmse(truth, predicted)
    return mae(truth, predicted)


def _check_metric(metric: PerformanceMetric, task: Task, has_probabilities: bool) -> None:
    regression_metric = metric in ("Rmse", "Mae")
    if regression_metric != (task == "regression"):
        raise QualityError(f"performance.metric {metric} does not apply to a {task} model")
    if metric == "RocAuc" and not has_probabilities:
        raise QualityError(
            "performance.metric RocAuc needs logged probabilities; this model version logs "
            f"no {LOG_PROBABILITIES_COLUMN} (it has no predict_proba)"
        )


def verdict(
    performance: Performance,
    metric: PerformanceMetric,
    value: float | None,
    labelled: int,
    offline: float | None,
) -> tuple[Verdict, str | None]:
    """InsufficientLabels under minLabelledRows or when the metric is undefined; Degraded when
    past ``threshold`` (below for Accuracy/F1/RocAuc, above for Rmse/Mae) or more than
    ``maxDrop`` worse than `offline`; Healthy otherwise. Raises QualityError when maxDrop is set
    but the ModelVersion records no offline figure for the metric."""
    if labelled < performance.min_labelled_rows:
        return "InsufficientLabels", (
            f"{labelled} labelled rows, fewer than minLabelledRows {performance.min_labelled_rows}"
        )
    if value is None:
        return "InsufficientLabels", f"{metric} is undefined: the labels hold a single class"
    direction = _direction(metric)
    if performance.threshold is not None:
        bound = float(performance.threshold)
        if (value - bound) * direction < 0:
            return "Degraded", f"{metric} {value:.4g} is past threshold {performance.threshold}"
    if performance.max_drop is not None:
        if offline is None:
            raise QualityError(
                f"performance.maxDrop needs the ModelVersion's offline "
                f"{OFFLINE_METRIC_KEYS[metric]}, which it does not record; set threshold instead"
            )
        drop = (offline - value) * direction
        if drop > float(performance.max_drop):
            return "Degraded", (
                f"{metric} {value:.4g} is {drop:.4g} worse than offline {offline:.4g}, more "
                f"than maxDrop {performance.max_drop}"
            )
    return "Healthy", None


def evaluate_window(
    performance: Performance,
    model_version: str,
    window: pa.Table,
    feedback: Feedback,
    logged_ids: pa.Array,
    *,
    task: Task,
    classes: Sequence[Any] | None = None,
    offline_metrics: dict[str, float] | None = None,
    calibration: Calibration | None = None,
    now: float | None = None,
) -> PerformanceReport:
    """One version's quality from its window (layout.py's columns), the feedback and every
    logged request id (for ``unknownIds``). `classes` (the ModelVersion's, as text) is used when
    the log's schema metadata names none; `calibration` applies when its classes are the logged
    ones (the same text), else the raw probabilities are used; `now` in epoch seconds. Raises QualityError for a
    metric that does not fit the model, or maxDrop without an offline figure."""
    now = time.time() if now is None else now
    if window.num_rows == 0:  # an empty log reads back without the log's own columns
        window = _EMPTY_WINDOW
    joined = _join(window, feedback, logged_ids, performance.label_delay_seconds, now)
    logged = _probabilities(window) if task == "classification" else None
    metric = performance.metric or default_metric(task)
    _check_metric(metric, task, logged is not None)
    probabilities: Floats | None = None  # calibrated: what CBPE estimates from
    raw: Floats | None = None  # as logged: what the realised ROC AUC ranks, as sklearn's would
    if logged is not None:
        raw, classes = logged
        probabilities = raw
        if calibration is not None and [str(c) for c in calibration.classes] == [
            str(c) for c in classes
        ]:
            probabilities = calibration.apply(raw)
    labels = joined.labels.column(FEEDBACK_LABEL_COLUMN)
    predictions = _plain(window.column(LOG_PREDICTION_COLUMN))
    estimated: dict[str, float | None] = {}
    estimate_gap = None
    truth: Any
    predicted: Any
    size = 0
    if task == "classification":
        encoded = encode_classes(_plain(labels), predictions, classes)
        _check_labels(encoded, classes, joined.labels)
        size = encoded.size
        truth = encoded.truth
        predicted_all = encoded.predicted
        predicted = predicted_all[joined.rows]
        labelled_probabilities = None if raw is None else raw[joined.rows]
        metrics = {
            "accuracy": accuracy(truth, predicted),
            "f1": macro_f1(truth, predicted, size),
            "roc_auc": None
            if labelled_probabilities is None or not truth.size
            else roc_auc(truth, labelled_probabilities),
        }
        if probabilities is not None:
            estimated = estimate_performance(probabilities, predicted_all)
            on_labelled = estimate_performance(probabilities[joined.rows], predicted)
            key = OFFLINE_METRIC_KEYS[metric]
            realised, expected = metrics[key], on_labelled[key]
            if realised is not None and expected is not None:
                estimate_gap = realised - expected
    else:
        truth = _numbers(labels, "label")
        predicted = _numbers(predictions, "prediction")[joined.rows]
        labelled_probabilities = None
        metrics = {"rmse": rmse(truth, predicted), "mae": mae(truth, predicted)}
    value = metrics[OFFLINE_METRIC_KEYS[metric]]
    offline = (offline_metrics or {}).get(OFFLINE_METRIC_KEYS[metric])
    result, reason = verdict(performance, metric, value, joined.counts.labelled, offline)
    slices = None
    if performance.slice_by is not None:
        labelled = _Labelled(truth, predicted, labelled_probabilities, size)
        slices = _slices(window, performance.slice_by, joined.rows, metric, labelled, value)
    return PerformanceReport(
        model_version=model_version,
        metric=metric,
        verdict=result,
        value=value,
        offline=offline,
        counts=joined.counts,
        metrics=metrics,
        estimated=estimated,
        estimate_gap=estimate_gap,
        outcomes=_outcomes(performance, joined.labels),
        slices=slices,
        reason=reason,
    )


def _check_labels(encoded: Encoded, classes: Sequence[Any] | None, labels: pa.Table) -> None:
    """QualityError naming the first label that is not one of the model's `classes`: /feedback
    refuses such labels, so only a bulk file brings them, and scoring them as wrong answers would
    invent a class."""
    if classes is None:
        return
    outside = np.flatnonzero(encoded.truth >= len(classes))
    if outside.size:
        first = int(outside[0])
        value = labels.column(FEEDBACK_LABEL_COLUMN)[first].as_py()
        request = labels.column(FEEDBACK_REQUEST_ID_COLUMN)[first].as_py()
        raise QualityError(
            f"{outside.size} labels are not one of the model's classes "
            f"{[str(c) for c in classes][:20]}, the first {value!r} for request {request!r}: "
            "a bulk feedback file's labels must be the classes' values"
        )


def _numbers(values: pa.Array | pa.ChunkedArray, what: str) -> Floats:
    try:
        numbers: Floats = pc.cast(_plain(values), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise QualityError(f"a regressor's {what} is not a number: {e}") from e
    return numbers


def _outcomes(
    performance: Performance, labels: pa.Table
) -> dict[str, tuple[str, float | None, int]]:
    result: dict[str, tuple[str, float | None, int]] = {}
    for outcome in performance.outcomes:
        values = labels.column(outcome.name)
        rows = len(values) - values.null_count
        if outcome.aggregate == "Sum":
            total = pc.sum(values).as_py()
            result[outcome.name] = ("Sum", float(total or 0.0), rows)
        else:
            mean = pc.mean(values).as_py()
            result[outcome.name] = ("Mean", None if mean is None else float(mean), rows)
    return result


@dataclass(frozen=True)
class _Labelled:
    """The labelled rows' truth and predictions (positions for classifiers, numbers for
    regressors) and probabilities."""

    truth: Any
    predicted: Any
    probabilities: Floats | None
    size: int


def _slices(
    window: pa.Table,
    column: str,
    rows: Codes,
    metric: PerformanceMetric,
    labelled: _Labelled,
    whole: float | None,
) -> Slices:
    """The metric per value of `column` over the labelled rows (positions `rows` in the window):
    the TOP_SLICES largest slices, each computed on a contiguous run after one sort by slice;
    the worst's gap to `whole`, the metric over all labelled rows."""
    if column not in window.column_names:
        return Slices(column, reason=f"sliceBy column {column!r} is not in the inference log")
    encoded = pc.dictionary_encode(_plain(window.column(column)).take(rows), null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.bincount(codes, minlength=len(encoded.dictionary))
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    largest = np.argsort(-counts, kind="stable")[:TOP_SLICES]
    values = encoded.dictionary.to_pylist()
    slices = []
    for code in largest:  # at most TOP_SLICES passes over contiguous runs, never per row
        if counts[code] == 0:
            continue
        members = order[starts[code] : starts[code + 1]]
        probabilities = labelled.probabilities
        slices.append(
            SliceQuality(
                values[code],
                int(counts[code]),
                _metric_value(
                    metric,
                    labelled.truth[members],
                    labelled.predicted[members],
                    None if probabilities is None else probabilities[members],
                    labelled.size,
                ),
            )
        )
    direction = _direction(metric)
    eligible = [
        (direction * s.metric, s)
        for s in slices
        if s.metric is not None and s.rows >= SLICE_MIN_ROWS
    ]
    if not eligible or whole is None:
        return Slices(column, slices)
    score, worst = min(eligible, key=lambda pair: pair[0])
    return Slices(column, slices, worst, direction * whole - score)


def run_performance(
    spec: DriftMonitorSpec,
    log_uri: str,
    model_version: str,
    *,
    task: Task,
    classes: Sequence[Any] | None = None,
    offline_metrics: dict[str, float] | None = None,
    calibration: Calibration | None = None,
    now: float | None = None,
) -> PerformanceReport:
    """One scheduled check of `model_version`'s live quality: its window of the Deployment's
    inference log at `log_uri` (``spec.window``), the ``_feedback`` segments and
    ``spec.performance.feedbackUris``, joined and judged (:func:`evaluate_window`).

    `offline_metrics` are the ModelVersion's ``spec.metrics`` as numbers (``accuracy``,
    ``roc_auc``, ``rmse``...), `calibration` its ``calibration.json`` if recorded
    (:meth:`Calibration.from_json`). Raises ValueError when the spec has no ``performance``, QualityError for bad
    feedback or configuration, OSError for the store.
    """
    performance = spec.performance
    if performance is None:
        raise ValueError("the DriftMonitor sets no spec.performance")
    now = time.time() if now is None else now
    window = read_version_window(
        log_uri, model_version, spec.window.rows, spec.window.seconds, now=now
    )
    feedback = read_feedback(
        feedback_uri(log_uri), performance.feedback_uris, [o.name for o in performance.outcomes]
    )
    return evaluate_window(
        performance,
        model_version,
        window,
        feedback,
        logged_request_ids(log_uri),
        task=task,
        classes=classes,
        offline_metrics=offline_metrics,
        calibration=calibration,
        now=now,
    )


# --- retraining data ---------------------------------------------------------------------------


def version_performance(
    spec: DriftMonitorSpec,
    log_uri: str,
    model_version: str | None,
    model_uri: str | None,
    now: float | None = None,
    max_bytes: int = RESULT_BYTES,
) -> dict[str, Any]:
    """`run_performance` for the version a drift run watched, with what it needs read from the
    version's directory (task and classes from schema.json, offline figures from metrics.json,
    calibration.json if recorded), as its compact result. Whatever stops it (no version, bad
    feedback, an unreadable store) is a result with verdict ``Error`` and a one-line reason, so
    the run still reports its drift verdict."""
    try:
        if model_version is None or model_uri is None:
            raise QualityError(
                "spec.performance needs the watched model version and its artifact "
                "(--model-version and --model-uri)"
            )
        schema = artifacts.load_schema(model_uri)
        offline = artifacts.read_json(artifacts.join(model_uri, METRICS_FILE))
        try:
            calibration = Calibration.from_json(
                artifacts.read_json(artifacts.join(model_uri, CALIBRATION_FILE))
            )
        except artifacts.ArtifactError as e:
            if not isinstance(e.__cause__, FileNotFoundError):
                raise
            calibration = None  # a regressor, no predict_proba, or calibration did not help
        report = run_performance(
            spec,
            log_uri,
            model_version,
            task=schema.task,
            classes=schema.classes,
            offline_metrics={str(k): float(v) for k, v in dict(offline).items()},
            calibration=calibration,
            now=now,
        )
    except (QualityError, artifacts.ArtifactError, OSError, ValueError, KeyError) as e:
        return {
            "modelVersion": model_version,
            "verdict": "Error",
            "reason": one_line(e)[: 4 * TEXT_LIMIT],
        }
    return report.to_result(max_bytes)


def labelled_rows(
    log_uri: str,
    features: Sequence[str],
    target: str,
    *,
    model_versions: Sequence[str] | None = None,
    rows: int | None = None,
    seconds: int | None = None,
    feedback_uris: Sequence[str] = (),
    now: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Logged inputs joined with their labels, for retraining: a DataFrame of `features` plus
    `target`, oldest first, and its lineage.

    Reads `model_versions` (default: every version in the log) whose logged schema has every
    feature, the last `rows` rows and/or those of the last `seconds` over them together, and the
    labels of the ``_feedback`` segments and `feedback_uris`, last write winning. Every label
    counts, however late: lateness matters to monitoring, not to the truth. The target takes the
    type of the newest version's predictions. Lineage: ``inferenceLog``, per version ``rows``,
    ``firstTs``, ``lastTs`` (epoch ms) of the rows used, ``feedbackFiles``, ``rows``. Raises
    QualityError when labels cannot take the predictions' type, or for bad feedback.
    """
    wanted = [*features, LOG_REQUEST_ID_COLUMN, LOG_TS_COLUMN]
    tables: list[pa.Table] = []
    prediction_type: pa.DataType | None = None
    newest = np.iinfo(np.int64).min
    for version in model_versions if model_versions is not None else log_versions(log_uri):
        window = read_version_window(log_uri, version, rows, seconds, now=now)
        if window.num_rows == 0 or not {*wanted, LOG_PREDICTION_COLUMN} <= set(window.column_names):
            continue
        last = int(pc.max(window.column(LOG_TS_COLUMN)).as_py())
        if last > newest:
            newest, prediction_type = last, _plain(window.column(LOG_PREDICTION_COLUMN)).type
        tables.append(
            pa.table(
                {
                    **{n: _plain(window.column(n)) for n in wanted},
                    "_version": pa.array([version] * window.num_rows, pa.string()),
                }
            )
        )
    feedback = read_feedback(feedback_uri(log_uri), feedback_uris)
    lineage: dict[str, Any] = {
        "inferenceLog": join(log_uri),
        "versions": {},
        "feedbackFiles": feedback.files,
        "rows": 0,
    }
    if not tables:
        return pd.DataFrame(columns=[*features, target]), lineage
    logged = pa.concat_tables(tables, promote_options="permissive").sort_by(LOG_TS_COLUMN)
    if rows is not None and logged.num_rows > rows:
        logged = logged.slice(logged.num_rows - rows)
    match = pc.index_in(
        logged.column(LOG_REQUEST_ID_COLUMN),
        value_set=feedback.table.column(FEEDBACK_REQUEST_ID_COLUMN),
    )
    keep = match.is_valid()
    labelled = logged.filter(keep)
    labels = _plain(feedback.table.column(FEEDBACK_LABEL_COLUMN)).take(pc.filter(match, keep))
    if prediction_type is not None and labels.type != prediction_type:
        try:
            labels = (
                _as_text(labels)
                if pa.types.is_string(prediction_type)
                else pc.cast(labels, prediction_type)
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise QualityError(
                f"labels of type {labels.type} cannot be read as the model's predictions "
                f"({prediction_type}): {e}"
            ) from e
    frame = labelled.select(list(features)).append_column(target, labels).to_pandas()
    versions = _plain(labelled.column("_version")).to_numpy(zero_copy_only=False)
    ts = labelled.column(LOG_TS_COLUMN).to_numpy()
    for version in dict.fromkeys(versions.tolist()):
        mine = ts[versions == version]
        lineage["versions"][version] = {
            "rows": int(mine.size),
            "firstTs": int(mine.min()),
            "lastTs": int(mine.max()),
        }
    lineage["rows"] = len(frame)
    return frame, lineage
