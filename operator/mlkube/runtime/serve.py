"""The model server: a BentoML service that serves one verified model version.

Run it with ``mlkube-runtime serve`` (``serving_cli``): what
``bentoml serve mlkube.runtime.serve:MLKubeModelServer`` does with one worker, in one process.

Environment (the primary interface; the operator sets these on the pod):

- ``MLKUBE_MODEL_URI``: the model version directory (a path, ``file://`` or ``s3://``).
- ``MLKUBE_MODEL_SHA256``: expected sha256 of ``model.joblib``; checked before unpickling, and a
  mismatch stops the server with an error naming the file and both digests. When unset, the
  digest recorded next to the model (``model.sha256``) is used.
- ``MLKUBE_INFERENCE_LOG_URI``: optional, the Deployment's inference log directory. The server
  writes its rows (inputs, predictions, probabilities, request ids) to ``<uri>/<model version>/``
  and the labels posted to ``/feedback`` to ``<uri>/_feedback/`` (``mlkube.layout``).
- ``MLKUBE_INFERENCE_LOG_MAX_BYTES``: the byte budget of this version's log directory; past it
  the oldest segments go (default 0: none; the operator sets the chart's ``inferenceLog.maxBytes``).
- ``MLKUBE_POD_NAME``: writer id of the inference log segments (default: the host name).
- ``MLKUBE_MODEL_VERSION``: the ``model_version`` label of the metrics (default: ``unknown``).
- ``MLKUBE_LIVE_QUALITY_ROWS``: answered rows kept to count live quality from the labels
  (default 500000; 0 turns the counting off; ``live_quality``).
- ``MLKUBE_PREDICTION_BUCKETS``: optional comma-separated bucket bounds of the regressor
  prediction histogram (default: symmetric 1-2-5 steps, see ``metrics``).
- ``MLKUBE_MAX_ROWS``: rows a ``/predict`` request, or labels a ``/feedback`` request, may hold
  (default 100000); more is a 413 naming the cap.
- ``MLKUBE_MAX_CONCURRENCY``: large requests computing at once in the server's thread pool
  (default 4), and ``MLKUBE_MAX_QUEUED``: large requests waiting for one of them (default 8). Past
  both, a large request is a 503 with ``Retry-After``: nothing waits without bound.
- ``MLKUBE_MIN_BODY_BYTES_PER_SECOND``: the slowest a request body may arrive, on average, after
  ``MLKUBE_BODY_GRACE_SECONDS`` (default 65536 bytes/s after 5 s; 0 turns the rule off); a body
  that falls behind is dropped with a 408 and the connection closed.
- Test and chaos knobs, for exercising canary analysis; leave unset in production:
  ``MLKUBE_FAULT_ERROR_PERCENT`` (0-100: that share of prediction requests answers 500) and
  ``MLKUBE_FAULT_DELAY_MS`` (added to every prediction request).

HTTP:

- ``POST /predict`` with ``{"instances": [{"col": value, ...}, ...]}`` (rows) or
  ``{"inputs": {"col": [value, ...], ...}}`` (columns), and optionally ``"id": "..."``. Every
  schema column must be present, with its type (float accepts integers; int accepts integral
  numbers), and ``null`` only in the columns the schema marks ``nullable`` (the model imputes
  them). Answer: ``{"predictions": [...], "probabilities": [[...], ...], "requestIds": [...],
  "modelVersion": "..."}``, with ``probabilities`` (in the order of the model's ``classes_``) for
  classifiers that have them, and ``<id>-<row>`` per row in ``requestIds``; the id (the body's
  ``id``, else the ``X-Request-ID`` header, else a new uuid4) comes back in ``X-Request-ID``.
  The body is always valid JSON: a prediction that is not a finite number is a 422 naming the row.
  A malformed body is a 400 and a schema violation a 422, both
  ``{"error": "...", "column": "..."}`` naming the column where there is one.
- ``POST /feedback`` with ``{"feedback": [{"requestId": "<id>-<row>", "label": ...,
  "outcomes": {"name": number}}, ...]}``: ground truth for logged rows, checked against the model
  (a classifier's label must be one of its classes, a regressor's a finite number) and stored
  off the request path; answer ``{"stored": n}``, or a 422 naming the item and its requestId.
- Both endpoints: a body over 16 MiB, or more rows (labels) than ``MLKUBE_MAX_ROWS``, is a 413; a body
  behind the floor rate a 408; a large request past the pool's places a 503 with
  ``Retry-After``. 408 and 413 count as 4xx in the request metrics, the 503 as a 5xx (a canary
  that sheds load more than the stable is worse; docs/serving.md).
- ``GET /livez``, ``GET /readyz``, ``GET /metrics``: BentoML's own; the metrics are listed in
  ``mlkube.runtime.metrics``.

Large requests: a body over ``INLINE_BODY_BYTES`` is decoded, checked, predicted and written out
in a bounded thread pool, and so is a prediction the model's cost (timed on probe rows at start)
puts over ``INLINE_PREDICT_SECONDS``; everything else runs inline on the event loop, where a thread
hop would cost more than the request. So probes, metrics and small requests are answered while
a large one computes (scikit-learn's trees release the GIL while they walk).

Speed: ``POST /predict`` is answered by a plain ASGI handler that the service class puts in front
of BentoML's application (``MLKubeService.to_asgi``), so the hot path skips BentoML's per-request
middleware, pydantic IO models and thread hop; everything else (lifecycle, probes, metrics,
configuration) is BentoML's. After the model loads, the heap is frozen (``gc.freeze``), which
takes the full-collection pauses (45 ms and more with ~200k live objects) off the request path.
docs/serving.md has the measurements.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import random
import re
import socket
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any, NamedTuple, NoReturn, Protocol, TypeVar

import bentoml
import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd
import sklearn

from mlkube.api.modelversion import ColumnType
from mlkube.layout import (
    FEEDBACK_LABEL_COLUMN,
    FEEDBACK_REQUEST_ID_COLUMN,
    LOG_CLASSES_METADATA,
    LOG_MODEL_VERSION_COLUMN,
    RESERVED_COLUMN_PREFIX,
    feedback_uri,
    version_log_uri,
)
from mlkube.runtime import artifacts
from mlkube.runtime.inference_log import Batch, SegmentWriter, Values
from mlkube.runtime.live_quality import MAX_ROWS, LiveQuality
from mlkube.runtime.metrics import PREDICTION_VALUE_BUCKETS, ServingMetrics

logger = logging.getLogger("mlkube.serve")
_T = TypeVar("_T")

ENV_MODEL_URI = "MLKUBE_MODEL_URI"
ENV_MODEL_SHA256 = "MLKUBE_MODEL_SHA256"
ENV_INFERENCE_LOG_URI = "MLKUBE_INFERENCE_LOG_URI"
ENV_INFERENCE_LOG_MAX_BYTES = "MLKUBE_INFERENCE_LOG_MAX_BYTES"
ENV_POD_NAME = "MLKUBE_POD_NAME"
ENV_MODEL_VERSION = "MLKUBE_MODEL_VERSION"
ENV_PREDICTION_BUCKETS = "MLKUBE_PREDICTION_BUCKETS"
ENV_LIVE_QUALITY_ROWS = "MLKUBE_LIVE_QUALITY_ROWS"
ENV_FAULT_ERROR_PERCENT = "MLKUBE_FAULT_ERROR_PERCENT"
ENV_FAULT_DELAY_MS = "MLKUBE_FAULT_DELAY_MS"
ENV_MAX_ROWS = "MLKUBE_MAX_ROWS"
ENV_MAX_CONCURRENCY = "MLKUBE_MAX_CONCURRENCY"
ENV_MAX_QUEUED = "MLKUBE_MAX_QUEUED"
ENV_MIN_BODY_RATE = "MLKUBE_MIN_BODY_BYTES_PER_SECOND"
ENV_BODY_GRACE_SECONDS = "MLKUBE_BODY_GRACE_SECONDS"
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MAX_QUEUED = 8
DEFAULT_MIN_BODY_RATE = 64 * 1024
DEFAULT_BODY_GRACE_SECONDS = 5.0

PREDICT_PATH = "/predict"
FEEDBACK_PATH = "/feedback"
METRICS_PATH = "/metrics"
METRICS_FLUSH_SECONDS = 1.0
MAX_BODY_BYTES = 16 * 1024 * 1024
REQUEST_ID_HEADER = b"x-request-id"  # ASGI servers give header names in lower case
MAX_REQUEST_ID_LENGTH = 128
MAX_ROW_ID_LENGTH = MAX_REQUEST_ID_LENGTH + 21
"""The longest ``<id>-<row>`` this server gives: an id, a dash and up to 20 digits."""
MAX_OUTCOME_NAME_LENGTH = 63
"""As a DriftMonitor's ``performance.outcomes[].name`` allows: a longer one could never be read."""
MAX_OUTCOMES = 16
"""Distinct outcome names in one /feedback request, as a DriftMonitor reads at most 16: each name
is a column of the feedback log, so without a bound one request could write thousands."""
INLINE_BODY_BYTES = 64 * 1024
"""Bodies up to this size are decoded on the event loop (under ~0.5 ms for object rows); larger
ones in the thread pool."""
INLINE_PREDICT_SECONDS = 0.002
"""A prediction the model's measured cost puts under this runs on the event loop: a thread hop
costs tens of µs, as much as a whole small request's share of a core."""
CALIBRATION_ROWS = 256
BODY_SWEEP_SECONDS = 0.25
"""How often bodies still arriving are checked against the floor rate."""
CLOSE_CONNECTION = (b"connection", b"close")

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]

# Which JSON value types each schema type accepts (bool is not an int here).
_ACCEPTED: dict[ColumnType, frozenset[type]] = {
    "float": frozenset({float, int}),
    "int": frozenset({int, float}),
    "string": frozenset({str}),
    "bool": frozenset({bool}),
}
_DTYPES: dict[ColumnType, type[np.generic]] = {
    "float": np.float64,
    "int": np.int64,
    "string": np.object_,
    "bool": np.bool_,
}
_NONE = type(None)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EXACT_FLOAT_INTEGER = 2**53
"""Every integer below this is exact as a float64; from it on, JSON numbers may have been
rounded (2**53 + 1 parses as 2**53), so an int column takes them only as JSON integers."""
_OUT_OF_RANGE = "number is infinity when parsed as double"
"""How orjson refuses 1e999 or 10**400: JSON allows them, a float64 cannot hold them."""
_NUMBERS = frozenset({float, int})
_PROBE_VALUES: dict[ColumnType, float | int | str | bool] = {
    "float": 0.0,
    "int": 0,
    "string": "",
    "bool": False,
}
_REQUEST_ID = re.compile(f"[!-~]{{1,{MAX_REQUEST_ID_LENGTH}}}")
"""Visible ASCII, no spaces: an id reads the same in a header, a log line and a Parquet column."""
_OUTCOME_NAME = re.compile(f"[A-Za-z_][A-Za-z0-9_.]{{0,{MAX_OUTCOME_NAME_LENGTH - 1}}}")
_FEEDBACK_FIELDS = frozenset({"requestId", "label", "outcomes"})
_SCALARS = frozenset({str, int, float, bool})


class ServeConfigError(Exception):
    """The environment does not describe a servable model."""


@dataclass(frozen=True)
class ServeSettings:
    """What the server reads from its environment."""

    model_uri: str
    model_sha256: str | None
    inference_log_uri: str | None
    inference_log_max_bytes: int | None
    pod_name: str
    model_version: str
    prediction_buckets: tuple[float, ...]
    live_quality_rows: int
    fault_error_percent: float
    fault_delay_ms: float
    max_rows: int = DEFAULT_MAX_ROWS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queued: int = DEFAULT_MAX_QUEUED
    min_body_rate: float = DEFAULT_MIN_BODY_RATE
    body_grace_seconds: float = DEFAULT_BODY_GRACE_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServeSettings:
        model_uri = environ.get(ENV_MODEL_URI, "").strip()
        if not model_uri:
            raise ServeConfigError(f"{ENV_MODEL_URI} must name the model version directory")
        buckets = environ.get(ENV_PREDICTION_BUCKETS, "").strip()
        return cls(
            model_uri=model_uri,
            model_sha256=environ.get(ENV_MODEL_SHA256, "").strip().lower() or None,
            inference_log_uri=environ.get(ENV_INFERENCE_LOG_URI, "").strip() or None,
            inference_log_max_bytes=int(
                _number_between(environ, ENV_INFERENCE_LOG_MAX_BYTES, 0, 2**62)
            )
            or None,
            pod_name=environ.get(ENV_POD_NAME, "").strip() or socket.gethostname(),
            model_version=environ.get(ENV_MODEL_VERSION, "").strip() or "unknown",
            prediction_buckets=(
                tuple(sorted(_number(ENV_PREDICTION_BUCKETS, b) for b in buckets.split(",")))
                if buckets
                else PREDICTION_VALUE_BUCKETS
            ),
            live_quality_rows=int(
                _number_between(environ, ENV_LIVE_QUALITY_ROWS, 0, 10**8, default=MAX_ROWS)
            ),
            fault_error_percent=_number_between(environ, ENV_FAULT_ERROR_PERCENT, 0, 100),
            fault_delay_ms=_number_between(environ, ENV_FAULT_DELAY_MS, 0, 600_000),
            max_rows=_integer_between(environ, ENV_MAX_ROWS, 1, 10**9, DEFAULT_MAX_ROWS),
            max_concurrency=_integer_between(
                environ, ENV_MAX_CONCURRENCY, 1, 1024, DEFAULT_MAX_CONCURRENCY
            ),
            max_queued=_integer_between(environ, ENV_MAX_QUEUED, 0, 10**5, DEFAULT_MAX_QUEUED),
            min_body_rate=_number_between(
                environ, ENV_MIN_BODY_RATE, 0, 10**12, default=DEFAULT_MIN_BODY_RATE
            ),
            body_grace_seconds=_number_between(
                environ, ENV_BODY_GRACE_SECONDS, 0, 3600, default=DEFAULT_BODY_GRACE_SECONDS
            ),
        )


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ServeConfigError(f"{name}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ServeConfigError(f"{name}: {text!r} is not finite")
    return value


def _number_between(
    environ: Mapping[str, str], name: str, low: float, high: float, default: float = 0
) -> float:
    value = _number(name, environ.get(name, "").strip() or str(default))
    if not low <= value <= high:
        raise ServeConfigError(f"{name}={value:g} must be between {low:g} and {high:g}")
    return value


def _integer_between(
    environ: Mapping[str, str], name: str, low: int, high: int, default: int
) -> int:
    value = _number_between(environ, name, low, high, default)
    if not value.is_integer():
        raise ServeConfigError(f"{name}={value:g} must be a whole number")
    return int(value)


class RequestError(Exception):
    """A request the server cannot answer: a 4xx, never a 5xx. `close`: the body was not read
    to its end, so the connection cannot carry another request."""

    def __init__(
        self, status: int, message: str, column: str | None = None, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.column = column
        self.close = close

    def body(self) -> dict[str, str]:
        return {"error": self.message} | ({"column": self.column} if self.column else {})


def parse_request(
    body: bytes,
    column_types: Mapping[str, ColumnType],
    nullable: frozenset[str] = frozenset(),
) -> dict[str, list[Any]]:
    """Decode and validate a request body into one list of values per schema column.

    ``null`` is a value only in the `nullable` columns: those the model was trained to impute.
    """
    return check_request(decode_request(body), column_types, nullable)


def decode_request(body: bytes) -> dict[str, Any]:
    """The JSON document, with exactly one of ``instances`` and ``inputs``."""
    document = _decode_json(body)
    if type(document) is not dict or ("instances" in document) is ("inputs" in document):
        raise RequestError(
            400, 'request body must be {"instances": [{...}, ...]} or {"inputs": {"col": [...]}}'
        )
    return document


def _decode_json(body: bytes) -> Any:
    """The body's JSON value; a 400 saying why where it is not one a model can take."""
    try:
        return orjson.loads(body)  # strict RFC 8259: no NaN, no Infinity, nor 1e999
    except orjson.JSONDecodeError as e:
        where = str(e).rpartition(": ")[2]
        if str(e).startswith(_OUT_OF_RANGE):  # valid JSON, but no number a model can take
            raise RequestError(
                400,
                f"request body has a number beyond a 64-bit float's range (about 1.8e308) at "
                f"{where}",
            ) from None
        # pos counts characters of the decoded text (doc), not bytes of the body
        if e.doc[e.pos : e.pos + 8].lower().startswith(("nan", "infinity")):
            raise RequestError(
                400,
                f"request body has NaN or Infinity at {where}: JSON (RFC 8259) has no such "
                "numbers; send null for a missing value where the model takes one",
            ) from None
        raise RequestError(400, f"request body is not valid JSON: {e}") from None


def check_request(
    document: dict[str, Any],
    column_types: Mapping[str, ColumnType],
    nullable: frozenset[str] = frozenset(),
) -> dict[str, list[Any]]:
    """One list of values per schema column; anything else is a RequestError naming it."""
    if "instances" in document:
        columns = _rows_to_columns(document["instances"], column_types)
    else:
        columns = _check_columnar(document["inputs"], column_types)
    for name, values in columns.items():
        _check_types(name, column_types[name], values, name in nullable)
    return columns


def _rows_to_columns(rows: Any, column_types: Mapping[str, ColumnType]) -> dict[str, list[Any]]:
    if not isinstance(rows, list) or not rows:
        raise RequestError(400, '"instances" must be a non-empty list of objects')
    names = list(column_types)
    # C-speed checks for the common case; _diagnose_rows finds what is wrong otherwise.
    if set(map(type, rows)) != {dict} or set(map(len, rows)) != {len(names)}:
        _diagnose_rows(rows, column_types)
    try:
        values = list(map(itemgetter(*names), rows))
    except KeyError:
        _diagnose_rows(rows, column_types)
    if len(names) == 1:
        return {names[0]: values}
    return dict(zip(names, map(list, zip(*values, strict=True)), strict=True))


def _diagnose_rows(rows: list[Any], column_types: Mapping[str, ColumnType]) -> NoReturn:
    names = column_types.keys()
    for index, row in enumerate(rows):
        if type(row) is not dict:
            raise RequestError(400, f"instances[{index}] must be an object")
        missing = [name for name in names if name not in row]
        if missing:
            raise RequestError(
                422, f"instances[{index}] is missing column {missing[0]!r}", missing[0]
            )
        unknown = [name for name in row if name not in column_types]
        if unknown:
            raise RequestError(
                422,
                f"instances[{index}] has unknown column {_cut(repr(unknown[0]))}; "
                f"the model takes {', '.join(names)}",
                _cut(unknown[0]),
            )
    raise AssertionError("_diagnose_rows called on valid rows")


def _check_columnar(inputs: Any, column_types: Mapping[str, ColumnType]) -> dict[str, list[Any]]:
    if not isinstance(inputs, dict):
        raise RequestError(400, '"inputs" must be an object of column name to list of values')
    for name in column_types:
        if name not in inputs:
            raise RequestError(422, f"inputs is missing column {name!r}", name)
    for name, values in inputs.items():
        if name not in column_types:
            raise RequestError(
                422,
                f"inputs has unknown column {_cut(repr(name))}; "
                f"the model takes {', '.join(column_types)}",
                _cut(name),
            )
        if not isinstance(values, list) or not values:
            raise RequestError(400, f"inputs[{name!r}] must be a non-empty list", name)
    lengths = Counter(len(inputs[name]) for name in column_types)
    rows = lengths.most_common(1)[0][0]  # the odd column out is the one to name
    for name in column_types:
        if len(inputs[name]) != rows:
            raise RequestError(
                422,
                f"inputs[{name!r}] has {_values(len(inputs[name]))} where the other columns "
                f"have {_values(rows)}: every column needs one value per row",
                name,
            )
    return {name: inputs[name] for name in column_types}


def _values(count: int) -> str:
    return f"{count} value" if count == 1 else f"{count} values"


def _check_types(name: str, expected: ColumnType, values: list[Any], nullable: bool) -> None:
    if _all_valid(expected, values, nullable):
        return
    for index, value in enumerate(values):
        if value is None and not nullable:
            raise RequestError(
                422,
                f"column {name!r} must be {expected}, got null in row {index}: the model was "
                "not trained to take missing values there",
                name,
            )
        problem = None if value is None else _problem(expected, value)
        if problem is not None:
            raise RequestError(
                422,
                f"column {name!r} must be {expected}, got {_describe(value)} in row {index}"
                f"{problem}",
                name,
            )


def _describe(value: Any) -> str:
    """A value as an error shows it: arrays and objects by size (a repr of 1,000 nested arrays
    overflows the stack), anything else cut by `_cut` (a megabyte string is not echoed back
    whole)."""
    if isinstance(value, list | dict):
        return f"{_json_type(value)} of {len(value)} {'items' if len(value) != 1 else 'item'}"
    return f"{_json_type(value)} {_cut(repr(value))}"


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _valid(expected: ColumnType, value: Any, nullable: bool) -> bool:
    return (value is None and nullable) or _problem(expected, value) is None


def _problem(expected: ColumnType, value: Any) -> str | None:
    """Why `value` (not null) does not fit a column of type `expected`; None when it does."""
    kind = type(value)
    if kind not in _ACCEPTED[expected]:
        return ""
    if kind is float and not math.isfinite(value):
        return ""
    if expected != "int":
        return None
    if kind is float and not value.is_integer():
        return ""
    if kind is float and abs(value) >= _EXACT_FLOAT_INTEGER:  # 2**53 + 1 arrives as 2**53
        # JSON integers beyond 64 bits arrive as floats, already rounded
        return (
            ": a number written with a fraction or exponent is not exact from 2**53 on; "
            "write the integer's digits"
        )
    if kind is int and not _INT64_MIN <= value <= _INT64_MAX:
        return ": beyond a 64-bit integer"
    return None


def _all_valid(expected: ColumnType, values: list[Any], nullable: bool) -> bool:
    """`_valid` for every value, at C speed where it matters (floats in float columns)."""
    kinds = set(map(type, values))
    if nullable and _NONE in kinds:
        kinds.discard(_NONE)
        values = [v for v in values if v is not None]
    if not kinds <= _ACCEPTED[expected]:
        return False
    if (
        expected == "int"
        and int in kinds
        and (min(values) < _INT64_MIN or max(values) > _INT64_MAX)
    ):
        return False
    if float not in kinds:
        return True
    if expected == "int":
        return all(_valid(expected, v, nullable) for v in values)
    try:
        return all(map(math.isfinite, values))
    except OverflowError:  # an integer beyond float's range
        return False


def _json_type(value: Any) -> str:
    names = {bool: "bool", int: "integer", float: "number", str: "string", list: "array"}
    return "null" if value is None else names.get(type(value), "object")


# Classifiers whose predict is not the argmax of predict_proba.
_PREDICT_IS_NOT_ARGMAX_PROBA = frozenset({"SVC", "NuSVC", "SGDClassifier"})
"""SVC's Platt-scaled probabilities can disagree with its decision; SGDClassifier's
``modified_huber`` probabilities are clipped, so classes tie where the decision does not."""


def _final_estimator(model: object) -> object:
    steps = getattr(model, "steps", None)  # a Pipeline
    return steps[-1][1] if steps else model


def _number_matrix(flat: Sequence[Any], shape: tuple[int, int]) -> npt.NDArray[np.float64] | None:
    """`flat` as a float matrix of `shape` when it holds JSON numbers only (no bools, strings,
    nulls or containers); None otherwise, or for an integer beyond float's range."""
    if not set(map(type, flat)) <= _NUMBERS:
        return None
    try:
        # one flat list converts several times faster than a list of rows
        return np.array(flat, dtype=np.float64).reshape(shape)
    except (OverflowError, ValueError):
        return None


_all_true = np.logical_and.reduce
"""``ndarray.all`` without its Python wrapper: this runs on every answer."""


def _check_finite(values: npt.NDArray[Any], what: str) -> None:
    """JSON (RFC 8259) has no Infinity or NaN: such an answer is refused, naming its row."""
    if values.dtype.kind != "f" or _all_true(np.isfinite(values), axis=None):
        return
    finite = np.isfinite(values)
    bad = finite if finite.ndim == 1 else finite.all(axis=1)
    row = int(np.argmin(bad))
    raise RequestError(
        422,
        f"the model's answer for row {row} is not finite ({what} "
        f"{_cut(repr(np.ravel(values[row]).tolist()))}): the input is outside what the model "
        "can answer",
    )


class Model(Protocol):
    def predict(self, features: Any) -> npt.NDArray[Any]: ...


class Inputs(NamedTuple):  # a NamedTuple: made per request, 4x cheaper than a frozen dataclass
    arrays: Batch
    """What the inference log takes: an array per column, or the float matrix under the tuple
    of its columns' names (one copy into the log instead of one per column)."""
    features: npt.NDArray[Any] | pd.DataFrame
    """What the model takes."""
    id: Any
    """The body's ``id`` as sent (unchecked: see `request_id_of`), None without one."""
    rows: int


class Prediction(NamedTuple):
    values: npt.NDArray[Any]
    probabilities: npt.NDArray[np.float64] | None
    class_positions: npt.NDArray[np.intp] | None = None
    """Each row's label as a position in the model's ``classes_``, where the label is the most
    probable class."""


class Predictor:
    """A loaded model plus the input layout it was found to accept."""

    def __init__(
        self, model: Model, schema: artifacts.ModelSchema, max_rows: int = DEFAULT_MAX_ROWS
    ) -> None:
        self.model = model
        self.max_rows = max_rows
        self.inline_rows = 0
        """The most rows `warm_up` found the model to predict in `INLINE_PREDICT_SECONDS`."""
        self.column_types = schema.column_types()
        fitted_names = getattr(model, "feature_names_in_", None)
        self.feature_order: list[str] = (
            [str(n) for n in fitted_names] if fitted_names is not None else list(self.column_types)
        )
        if set(self.feature_order) != set(self.column_types):
            raise ServeConfigError(
                f"the model was fitted on columns {self.feature_order}, "
                f"but its schema lists {list(self.column_types)}"
            )
        self.nullable = frozenset(c.name for c in schema.columns if c.nullable)
        # a missing value is NaN in a float array, None in an object one
        self.dtypes: dict[str, type[np.generic]] = {
            name: (np.float64 if kind in ("float", "int") else np.object_)
            if name in self.nullable
            else _DTYPES[kind]
            for name, kind in self.column_types.items()
        }
        self.is_classifier = schema.task == "classification"
        # SVC (probability=False) and others answer labels only
        self.has_probabilities = self.is_classifier and hasattr(model, "predict_proba")
        self.classes = np.asarray(getattr(model, "classes_", []))
        # One model call instead of two: the label is the most probable class, except where
        # probabilities are calibrated apart from the decision (SVC's Platt scaling).
        self.labels_from_probabilities = (
            self.has_probabilities
            and len(self.classes) > 0
            and type(_final_estimator(model)).__name__ not in _PREDICT_IS_NOT_ARGMAX_PROBA
        )
        self.uses_frame = not self._numeric_matrix_works()
        # all-float schemas (most numeric models) go from JSON to the model's matrix in one step
        self.float_matrix = not self.nullable and set(self.column_types.values()) == {"float"}
        self._row_values = itemgetter(*self.feature_order)
        self._matrix_columns = tuple(self.feature_order)

    def _numeric_matrix_works(self) -> bool:
        """Numeric inputs go in as a float matrix (fast) when the model accepts one.

        A model fitted on a DataFrame warns about the missing column names; the server has
        already checked the names and put the values in the fitted order, so that warning
        is silenced. A pipeline that selects columns by name needs a DataFrame and fails here.
        """
        if any(t == "string" for t in self.column_types.values()):
            return False
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        try:
            self.model.predict(self._matrix(self._probe()))
        except Exception:
            return False
        return True

    def arrays(self, columns: Mapping[str, list[Any]]) -> dict[str, npt.NDArray[Any]]:
        """One array per column in the schema's type: what the model and the log take."""
        arrays: dict[str, npt.NDArray[Any]] = {}
        for name, dtype in self.dtypes.items():
            try:
                arrays[name] = np.asarray(columns[name], dtype=dtype)
            except (OverflowError, ValueError) as e:
                raise RequestError(422, f"column {name!r}: {e}", name) from None
        return arrays

    def _matrix(self, arrays: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
        return np.array([arrays[name] for name in self.feature_order], dtype=np.float64).T

    def _frame(self, arrays: Mapping[str, npt.NDArray[Any]]) -> pd.DataFrame:
        return pd.DataFrame({name: arrays[name] for name in self.feature_order})

    def features(self, arrays: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[Any] | pd.DataFrame:
        return self._frame(arrays) if self.uses_frame else self._matrix(arrays)

    def read(self, body: bytes) -> Inputs:
        """A request body as the model's input and the log's columns, validated; more rows than
        `max_rows` is a 413 before any of them is looked at."""
        document = decode_request(body)
        rows = _row_count(document)
        if rows > self.max_rows:
            raise RequestError(
                413,
                f"the request has {rows} rows; this server takes at most {self.max_rows} a "
                f"request ({ENV_MAX_ROWS}): split it",
            )
        matrix = self._valid_float_matrix(document) if self.float_matrix else None
        if matrix is not None:
            features = (
                pd.DataFrame(matrix, columns=self.feature_order) if self.uses_frame else matrix
            )
            return Inputs({self._matrix_columns: matrix}, features, document.get("id"), rows)
        arrays = self.arrays(check_request(document, self.column_types, self.nullable))
        return Inputs(arrays, self.features(arrays), document.get("id"), rows)

    def _valid_float_matrix(self, document: dict[str, Any]) -> npt.NDArray[np.float64] | None:
        """The rows as a float matrix in the fitted column order, checked at C speed: numbers
        only, every column and no other. None for anything else, which `check_request` then
        examines value by value to say what is wrong. Every number is finite: orjson refuses
        NaN, Infinity and numbers beyond float64, and an int beyond it fails the conversion."""
        if "instances" in document:
            return self._rows_matrix(document["instances"])
        matrix = self._columns_matrix(document["inputs"])
        return None if matrix is None else matrix.T

    def _rows_matrix(self, rows: Any) -> npt.NDArray[np.float64] | None:
        width = len(self.feature_order)
        if type(rows) is not list or not rows:
            return None
        try:  # a row that is not an object has no len() or no string keys: TypeError
            if sum(map(len, rows)) != len(rows) * width:
                return None  # with no column missing (KeyError below), a row has an extra
            values = list(map(self._row_values, rows))
        except (KeyError, TypeError):
            return None
        if width == 1:
            return _number_matrix(values, (len(rows), 1))
        # one row is already a flat tuple; more are flattened into one list
        flat = values[0] if len(rows) == 1 else list(chain.from_iterable(values))
        return _number_matrix(flat, (len(rows), width))

    def _columns_matrix(self, inputs: Any) -> npt.NDArray[np.float64] | None:
        """The columns as a (columns, rows) matrix."""
        names = self.feature_order
        if type(inputs) is not dict or len(inputs) != len(names):
            return None
        try:
            values = [inputs[name] for name in names]
        except KeyError:
            return None
        if {type(v) for v in values} != {list} or len({len(v) for v in values}) != 1:
            return None
        if not values[0]:
            return None
        return _number_matrix(list(chain.from_iterable(values)), (len(names), len(values[0])))

    def predict(self, features: npt.NDArray[Any] | pd.DataFrame) -> Prediction:
        """The model's answer; a row it answers with a non-finite number is a 422 naming it."""
        if not self.has_probabilities:
            values = np.asarray(self.model.predict(features))
            if not self.is_classifier:
                _check_finite(values, "prediction")
            return Prediction(values, None)
        probabilities = np.asarray(self.model.predict_proba(features))  # type: ignore[attr-defined]
        _check_finite(probabilities, "probabilities")
        if not self.labels_from_probabilities:
            return Prediction(np.asarray(self.model.predict(features)), probabilities)
        positions = probabilities.argmax(axis=1)
        return Prediction(self.classes[positions], probabilities, positions)

    def _probe(self, rows: int = 1) -> dict[str, npt.NDArray[Any]]:
        return self.arrays(
            {name: [_PROBE_VALUES[t]] * rows for name, t in self.column_types.items()}
        )

    def warm_up(self) -> None:
        """Predictions before traffic, so the first request pays no lazy initialisation; timed,
        they set `inline_rows`. Without them (a probe of zeros may be outside what a pipeline
        accepts) every prediction runs in the thread pool."""
        try:
            one = self.features(self._probe())
            many = self.features(self._probe(CALIBRATION_ROWS))
            self.predict(one)
            fixed = _best_seconds(lambda: self.predict(one))
            per_row = max(0.0, _best_seconds(lambda: self.predict(many)) - fixed) / (
                CALIBRATION_ROWS - 1
            )
        except Exception as e:
            logger.info("warm-up prediction skipped, every prediction runs off the loop: %s", e)
            return
        spare = INLINE_PREDICT_SECONDS - fixed
        self.inline_rows = (
            0 if spare < 0 else self.max_rows if per_row == 0 else int(1 + spare / per_row)
        )
        logger.info(
            "the model predicts 1 row in %.2f ms and each further one in %.2f µs: requests of "
            "up to %d rows are predicted on the event loop, larger ones in the thread pool",
            fixed * 1e3,
            per_row * 1e6,
            self.inline_rows,
        )


def _best_seconds(call: Callable[[], object], times: int = 3) -> float:
    timings = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return min(timings)


def _row_count(document: dict[str, Any]) -> int:
    """The rows a decoded body holds, as far as its shape says (0 where it is not a list)."""
    if "instances" in document:
        rows = document["instances"]
        return len(rows) if type(rows) is list else 0
    inputs = document["inputs"]
    if type(inputs) is not dict:
        return 0
    return max([len(v) for v in inputs.values() if type(v) is list], default=0)


def request_id_of(body_id: Any, headers: Iterable[tuple[bytes, bytes]]) -> str:
    """A prediction request's id: the body's ``id``, else the ``X-Request-ID`` header, else a new
    uuid4 (hex). The body wins: the client wrote it for this request, where a header may have been
    added on the way (ingress-nginx sets ``X-Request-ID`` on every request it forwards). A bad one
    is a 400: it would name rows that feedback could not name back."""
    if body_id is not None:
        if type(body_id) is str and _REQUEST_ID.fullmatch(body_id):
            return body_id
        raise RequestError(400, f'"id" must be {_ID_RULE}, got {_describe(body_id)}')
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
            raise RequestError(400, f"X-Request-ID must be {_ID_RULE}, got {_cut(repr(text))}")
    return uuid4_hex()


_ID_RULE = f"a string of 1 to {MAX_REQUEST_ID_LENGTH} visible ASCII characters (no spaces)"
_UUID4_KEEP = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def uuid4_hex() -> str:
    """``uuid.uuid4().hex`` in 0.7 µs instead of 1.8: the same bits, without a UUID object."""
    return "%032x" % (int.from_bytes(os.urandom(16)) & _UUID4_KEEP | _UUID4_SET)


_ROW_IDS_TEMPLATE_ROWS = 1024
_ID_PLACEHOLDER = "\0"  # never in an id: ids are visible ASCII
_ROW_ID_PIECES = [f'"{_ID_PLACEHOLDER}-{row}",' for row in range(_ROW_IDS_TEMPLATE_ROWS)]
_ROW_IDS_TEMPLATE = "[" + "".join(_ROW_ID_PIECES)
_ROW_IDS_ENDS = list(accumulate(map(len, _ROW_ID_PIECES), initial=1))
"""Where the template's first n ids end, after their comma."""


def row_ids_json(request_id: str, rows: int) -> orjson.Fragment | list[str]:
    """The answer's ``requestIds``, ``<id>-<row>`` per row, as JSON ready for orjson: a prefix of
    one template (``["<id>-0","<id>-1",...``) with the id put in by one ``str.replace``. At 100
    rows a list of strings added ~11 µs to the answer's JSON, this ~3 (its 3.6 kB written);
    beyond the template's rows, a list."""
    if rows > _ROW_IDS_TEMPLATE_ROWS:
        return [f"{request_id}-{row}" for row in range(rows)]
    escaped = orjson.dumps(request_id).decode()[1:-1]  # an id may hold " or a backslash
    ids = _ROW_IDS_TEMPLATE[: _ROW_IDS_ENDS[rows] - 1].replace(_ID_PLACEHOLDER, escaped)
    return orjson.Fragment(ids + "]")


class FeedbackError(RequestError):
    """A refused ``/feedback`` item, named by its index and, where it has one, its requestId."""

    def __init__(self, message: str, index: int, row_id: str | None = None) -> None:
        where = f"feedback[{index}]" + (f" (requestId {_cut(repr(row_id))})" if row_id else "")
        super().__init__(422, f"{where}: {message}")
        self.index = index
        self.row_id = row_id

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "index": self.index} | (
            {"requestId": self.row_id} if self.row_id else {}
        )


class FeedbackReader:
    """Reads ``POST /feedback`` bodies into the feedback log's columns, checked against the model:
    a classifier's label must equal one of its classes (JSON ``1`` for int classes, ``"setosa"``
    for string ones) and is stored in the classes' type; a regressor's must be a finite number.
    Outcomes are named finite numbers; a row without one of them has null there."""

    def __init__(self, classes: npt.NDArray[Any] | None, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        """`classes`: a classifier's ``classes_``; None for a regressor. `max_rows`: the most
        labels a request may hold."""
        self.classes = classes
        self.max_rows = max_rows
        self._positions: dict[Any, int] | None = (
            None if classes is None else {label: i for i, label in enumerate(classes.tolist())}
        )
        self._bool_classes = classes is not None and classes.dtype.kind == "b"

    def read(self, body: bytes) -> dict[str, Values]:
        document = _decode_json(body)
        items = document.get("feedback") if type(document) is dict else None
        if type(items) is not list or not items:
            raise RequestError(
                400,
                'request body must be {"feedback": [{"requestId": "...", "label": ...}, ...]} '
                "with at least one item",
            )
        if len(items) > self.max_rows:
            raise RequestError(
                413,
                f"the request has {len(items)} labels; this server takes at most "
                f"{self.max_rows} a request ({ENV_MAX_ROWS}): split it",
            )
        row_ids: list[str] = []
        labels: list[Any] = []
        outcomes: list[dict[str, float]] = []
        names: dict[str, None] = {}  # the distinct outcome names, in the order they came
        for index, item in enumerate(items):
            if type(item) is not dict:
                raise RequestError(400, f"feedback[{index}] must be an object")
            row_id = item.get("requestId")
            if type(row_id) is not str or not 0 < len(row_id) <= MAX_ROW_ID_LENGTH:
                raise FeedbackError(
                    f"requestId must be a non-empty string of at most {MAX_ROW_ID_LENGTH} "
                    "characters, as in the answer's requestIds",
                    index,
                )
            unknown = item.keys() - _FEEDBACK_FIELDS
            if unknown:
                raise FeedbackError(
                    f"unknown field {_cut(repr(min(unknown)))}; an item has requestId, label "
                    "and optionally outcomes",
                    index,
                    row_id,
                )
            if "label" not in item:
                raise FeedbackError("label is missing", index, row_id)
            labels.append(self._label(item["label"], index, row_id))
            named = _outcomes(item.get("outcomes"), index, row_id)
            outcomes.append(named)
            if named.keys() - names:
                names.update(dict.fromkeys(named))
                if len(names) > MAX_OUTCOMES:
                    raise FeedbackError(
                        f"the request names more than {MAX_OUTCOMES} outcomes "
                        f"({_cut(', '.join(names))}); send at most {MAX_OUTCOMES} names",
                        index,
                        row_id,
                    )
            row_ids.append(row_id)
        columns: dict[str, Values] = {
            FEEDBACK_REQUEST_ID_COLUMN: row_ids,
            FEEDBACK_LABEL_COLUMN: (
                np.asarray(labels, dtype=np.float64)
                if self.classes is None
                else self.classes[np.asarray(labels, dtype=np.intp)]
            ),
        }
        columns.update((name, [row.get(name) for row in outcomes]) for name in names)
        return columns

    def _label(self, value: Any, index: int, row_id: str) -> Any:
        """A regressor's label as a float; a classifier's as its position in ``classes_``."""
        if self._positions is None:
            if _finite_number(value):
                return float(value)
            raise FeedbackError(
                f"label must be a finite number (the model is a regressor), got {_describe(value)}",
                index,
                row_id,
            )
        # bool is an int in Python (True == 1): only bool classes take JSON true/false
        if type(value) in _SCALARS and (type(value) is bool) is self._bool_classes:
            position = self._positions.get(value)
            if position is not None:
                return position
        raise FeedbackError(
            f"label {_describe(value)} is not one of the model's classes "
            f"{_cut(repr(list(self._positions)))}",
            index,
            row_id,
        )


def _finite_number(value: Any) -> bool:
    try:
        return type(value) in _NUMBERS and math.isfinite(value)
    except OverflowError:  # an integer beyond float's range
        return False


def _outcomes(outcomes: Any, index: int, row_id: str) -> dict[str, float]:
    if outcomes is None:
        return {}
    if type(outcomes) is not dict:
        raise FeedbackError(
            f"outcomes must be an object of name to number, got {_describe(outcomes)}",
            index,
            row_id,
        )
    for name, value in outcomes.items():
        if (
            not _OUTCOME_NAME.fullmatch(name)
            or name.startswith(RESERVED_COLUMN_PREFIX)
            or name in _FEEDBACK_FIELDS
        ):
            raise FeedbackError(
                f"outcome name {_cut(repr(name))} must match [A-Za-z_][A-Za-z0-9_.]* (at most "
                f"{MAX_OUTCOME_NAME_LENGTH} characters), not start with "
                f"{RESERVED_COLUMN_PREFIX!r} and not be requestId, label or outcomes",
                index,
                row_id,
            )
        if not _finite_number(value):
            raise FeedbackError(
                f"outcome {name!r} must be a finite number, got {_describe(value)}",
                index,
                row_id,
            )
    return {name: float(value) for name, value in outcomes.items()}


class _Read:
    """A body being read: since when, and how much of it is in."""

    __slots__ = ("expired", "received", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.received = 0
        self.expired = False


class BodyReader:
    """Reads request bodies: one over `MAX_BODY_BYTES` is a 413, and one whose bytes fall behind
    `rate` a second, on average, `grace` seconds after its request began is dropped with a 408
    (a client dripping a body would otherwise hold its memory and connection for ever).

    Bodies still arriving are checked every `BODY_SWEEP_SECONDS` by one timer, which cancels the
    reads that fell behind: a request whose body came with its headers pays a dict entry, no timer
    of its own."""

    def __init__(self, rate: float, grace: float) -> None:
        self.rate = rate
        self.grace = grace
        self._reads: dict[asyncio.Task[Any], _Read] = {}
        self._sweeping = False

    async def read(self, receive: ASGIReceive, started: float) -> bytes:
        """The body of the request that began at `started` (``time.perf_counter``)."""
        task = asyncio.current_task()
        if not self.rate or task is None:
            return await _read_body(receive)
        read = _Read(started)
        self._reads[task] = read
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(BODY_SWEEP_SECONDS, self._sweep)
        try:
            return await _read_body(receive, read)
        except asyncio.CancelledError:
            if not read.expired:
                raise
            task.uncancel()
            raise RequestError(
                408,
                f"the request body arrived slower than {self.rate:g} bytes a second "
                f"({ENV_MIN_BODY_RATE}): {read.received} bytes in "
                f"{time.perf_counter() - started:.1f} s",
                close=True,
            ) from None
        finally:
            del self._reads[task]

    def _sweep(self) -> None:
        now = time.perf_counter()
        for task, read in self._reads.items():
            if not read.expired and now > read.started + self.grace + read.received / self.rate:
                read.expired = True
                task.cancel()
        if self._reads:
            asyncio.get_running_loop().call_later(BODY_SWEEP_SECONDS, self._sweep)
        else:
            self._sweeping = False


async def _read_body(receive: ASGIReceive, read: _Read | None = None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "client disconnected before sending the body")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(
                413, f"request body is larger than {MAX_BODY_BYTES} bytes", close=True
            )
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk  # one chunk: no copy
        chunks.append(chunk)
        if read is not None:
            read.received = size


class Overloaded(Exception):
    """Every thread-pool slot and every place to wait for one is taken: a 503."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ThreadPool:
    """Where large requests compute: `workers` threads, and at most `queued` more requests
    admitted to wait for one; past that `admit` refuses (`Overloaded`) instead of queueing.

    Call `admit` and `leave` from the event loop, once each per admitted request, which may then
    `run` any number of steps."""

    def __init__(self, workers: int, queued: int) -> None:
        self.workers = workers
        self.queued = queued
        self._executor = ThreadPoolExecutor(
            workers, thread_name_prefix="mlkube-predict", initializer=_configure_sklearn
        )
        self._admitted = 0
        self._seconds = 1.0
        """How long admitted requests took, a moving average: what ``Retry-After`` says."""

    def admit(self) -> float:
        """A place for one more request; the time it was admitted."""
        if self._admitted >= self.workers + self.queued:
            wait = max(1, math.ceil(self._seconds * self._admitted / self.workers))
            raise Overloaded(
                f"the server is busy: {self._admitted} large requests are computing or waiting "
                f"({ENV_MAX_CONCURRENCY}={self.workers}, {ENV_MAX_QUEUED}={self.queued}); retry "
                f"after {wait} s",
                wait,
            )
        self._admitted += 1
        return time.perf_counter()

    def leave(self, admitted: float) -> None:
        self._admitted -= 1
        self._seconds += 0.2 * (time.perf_counter() - admitted - self._seconds)

    async def run(self, call: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _configure_sklearn() -> None:
    """Requests are checked to be finite before they reach the model, so sklearn need not check
    again; the setting is per thread."""
    sklearn.set_config(assume_finite=True)


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: arrays of objects (string labels) or not contiguous."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _encode(document: Any) -> bytes:
    return orjson.dumps(document, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY)


async def _send_json(
    send: ASGISend,
    status: int,
    document: Any,
    request_id: str | None = None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """`document` (or its JSON, as bytes) as the answer; `request_id` is echoed in
    ``X-Request-ID``."""
    body = document if type(document) is bytes else _encode(document)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    if request_id is not None:
        headers.append((REQUEST_ID_HEADER, request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _failure(
    error: Exception, what: str
) -> tuple[int, dict[str, Any], Sequence[tuple[bytes, bytes]]]:
    """A request that failed as its answer: a RequestError's own 4xx (closing the connection
    when its body was cut off), 503 with Retry-After when the pool is full, else a 500 whose
    traceback goes to the log, never to the client."""
    if isinstance(error, RequestError):
        return error.status, error.body(), (CLOSE_CONNECTION,) if error.close else ()
    if isinstance(error, Overloaded):
        return 503, {"error": error.message}, ((b"retry-after", str(error.retry_after).encode()),)
    logger.exception("%s failed", what, exc_info=error)
    return 500, {"error": f"{what} failed; see the server log"}, ()


class MLKubeService(bentoml.Service[Any]):  # type: ignore[misc]
    """BentoML's Service with ``POST /predict`` answered in front of BentoML's middleware stack.

    Mounting the handler with ``bentoml.asgi_app`` instead still runs every request through
    BentoML's tracing, access-log, metrics, timeout and context middleware, which cost more than
    the prediction itself for a small model (docs/serving.md).
    """

    def to_asgi(self, is_main: bool = True) -> ASGIApp:
        bentoml_app: ASGIApp = super().to_asgi(is_main=is_main)

        server: MLKubeModelServer | None = None  # looked up once: the lookup is not free

        async def app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
            nonlocal server
            if scope["type"] == "http" and scope["path"] == PREDICT_PATH:
                server = server or bentoml.get_current_service()
                await server.handle_predict(scope, receive, send)
                return
            if scope["type"] == "http" and scope["path"] == FEEDBACK_PATH:
                server = server or bentoml.get_current_service()
                await server.handle_feedback(scope, receive, send)
                return
            if scope["type"] == "http" and scope["path"] == METRICS_PATH:
                server = server or bentoml.get_current_service()
                server.metrics.flush()
            await bentoml_app(scope, receive, send)

        return app


@bentoml.service(service_class=MLKubeService, workers=1)
class MLKubeModelServer:
    """Loads the model named by the environment, verified, and answers predictions."""

    def __init__(self) -> None:
        settings = ServeSettings.from_env(os.environ)
        model: Model = artifacts.load_verified_model(  # type: ignore[assignment]
            settings.model_uri, settings.model_sha256
        )
        self.settings = settings
        _configure_sklearn()  # for the event loop's thread; the pool's threads do it themselves
        self.predictor = Predictor(
            model, artifacts.load_schema(settings.model_uri), settings.max_rows
        )
        self.predictor.warm_up()
        self.pool = ThreadPool(settings.max_concurrency, settings.max_queued)
        self.bodies = BodyReader(settings.min_body_rate, settings.body_grace_seconds)
        self.metrics = ServingMetrics(
            settings.model_version,
            prediction_buckets=settings.prediction_buckets,
            class_labels=self.predictor.classes.tolist(),
        )
        self._metrics_flushed = time.perf_counter()
        self.inference_log: SegmentWriter | None = None
        self.feedback_log: SegmentWriter | None = None
        self.live_quality: LiveQuality | None = None
        if settings.inference_log_uri:
            classes = self.predictor.classes.tolist()
            self.inference_log = SegmentWriter(
                version_log_uri(settings.inference_log_uri, settings.model_version),
                settings.pod_name,
                constants={LOG_MODEL_VERSION_COLUMN: settings.model_version},
                retention_bytes=settings.inference_log_max_bytes,
                metadata=(
                    {LOG_CLASSES_METADATA: orjson.dumps(classes)}
                    if self.predictor.has_probabilities
                    else None
                ),
            )
            # Labels are few and worth more than drift samples: no retention, the store's
            # lifecycle rules decide when they go.
            self.feedback_log = SegmentWriter(
                feedback_uri(settings.inference_log_uri),
                settings.pod_name,
                retention_segments=None,
            )
            if settings.live_quality_rows:
                self.live_quality = LiveQuality(
                    feedback_uri(settings.inference_log_uri),
                    self.predictor.classes if self.predictor.is_classifier else None,
                    self.metrics.observe_labelled,
                    max_rows=settings.live_quality_rows,
                )
        self.feedback = FeedbackReader(
            self.predictor.classes if self.predictor.is_classifier else None, settings.max_rows
        )
        logger.info(
            "serving %s (model version %s, sha256 verified, %s input)",
            settings.model_uri,
            settings.model_version,
            "DataFrame" if self.predictor.uses_frame else "matrix",
        )
        # Everything allocated so far (~200k objects: BentoML, sklearn, the model) lives as long
        # as the process; frozen, a full collection no longer walks it (45 ms -> ~0 ms here).
        gc.collect()
        gc.freeze()
        if self.live_quality is not None:
            self.live_quality.start()

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    def close_logs(self) -> None:
        """Write out what both logs buffered (a SIGTERM shuts down through here)."""
        self.pool.shutdown()
        if self.live_quality is not None:
            self.live_quality.stop()
        for writer in (self.inference_log, self.feedback_log):
            if writer is not None:
                try:
                    writer.close()
                except Exception:
                    logger.exception("writing out %s at shutdown failed", writer.uri)

    async def handle_predict(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        """``POST /predict``: validate, predict, answer; count and log after answering.

        A large body is read into the model's input in the thread pool, and a costly prediction
        (by the model's timing at start) is predicted and written out there; the rest runs
        inline."""
        started = time.perf_counter()
        if scope["method"] != "POST":
            await _send_json(send, 405, {"error": "use POST"})
            self.metrics.observe_request(405, time.perf_counter() - started)
            return
        settings = self.settings
        if settings.fault_delay_ms:
            await asyncio.sleep(settings.fault_delay_ms / 1000)
        arrays: Batch | None = None
        prediction: Prediction | None = None
        request_id: str | None = None
        headers: Sequence[tuple[bytes, bytes]] = ()
        document: Any
        admitted: float | None = None
        try:
            body = await self.bodies.read(receive, started)
            if (
                settings.fault_error_percent
                and random.random() * 100 < settings.fault_error_percent
            ):
                status, document = 500, {"error": f"injected fault ({ENV_FAULT_ERROR_PERCENT})"}
            elif len(body) <= INLINE_BODY_BYTES:
                inputs = self.predictor.read(body)
                request_id = request_id_of(inputs.id, scope["headers"])
                arrays = inputs.arrays
                if inputs.rows <= self.predictor.inline_rows:
                    prediction = self.predictor.predict(inputs.features)
                    status, document = 200, self._answer(prediction, request_id)
                else:
                    admitted = self.pool.admit()
                    prediction, document = await self.pool.run(
                        self._predict, inputs.features, request_id
                    )
                    status = 200
            else:
                admitted = self.pool.admit()
                inputs = await self.pool.run(self.predictor.read, body)
                del body  # its megabytes need not live through the prediction
                request_id = request_id_of(inputs.id, scope["headers"])
                arrays = inputs.arrays
                prediction, document = await self.pool.run(
                    self._predict, inputs.features, request_id
                )
                status = 200
        except Exception as e:  # every failure is an answer (_failure)
            status, document, headers = _failure(e, "prediction")
        finally:
            if admitted is not None:
                self.pool.leave(admitted)
        await _send_json(send, status, document, request_id, headers)
        finished = time.perf_counter()
        self.metrics.observe_request(status, finished - started)
        if prediction is not None and arrays is not None:
            self._record(arrays, prediction, request_id)
        if finished - self._metrics_flushed > METRICS_FLUSH_SECONDS:
            self._metrics_flushed = finished
            self.metrics.flush()

    def _predict(
        self, features: npt.NDArray[Any] | pd.DataFrame, request_id: str
    ) -> tuple[Prediction, bytes]:
        """The prediction and its answer's JSON: the thread pool's part of a large request."""
        prediction = self.predictor.predict(features)
        return prediction, _encode(self._answer(prediction, request_id))

    def _answer(self, prediction: Prediction, request_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = {"predictions": prediction.values}
        if prediction.probabilities is not None:
            answer["probabilities"] = prediction.probabilities
        answer["requestIds"] = row_ids_json(request_id, len(prediction.values))
        answer["modelVersion"] = self.settings.model_version
        return answer

    async def handle_feedback(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        """``POST /feedback``: check the labels, queue them for the feedback log, answer."""
        started = time.perf_counter()
        stored = 0
        document: dict[str, Any]
        headers: Sequence[tuple[bytes, bytes]] = ()
        admitted: float | None = None
        try:
            if scope["method"] != "POST":
                raise RequestError(405, "use POST")
            if self.feedback_log is None:
                raise RequestError(
                    404, f"no feedback is kept here: {ENV_INFERENCE_LOG_URI} is unset"
                )
            body = await self.bodies.read(receive, started)
            if len(body) <= INLINE_BODY_BYTES:
                columns = self.feedback.read(body)
            else:  # checking labels is a loop in Python: ~3 µs each
                admitted = self.pool.admit()
                columns = await self.pool.run(self.feedback.read, body)
            self.feedback_log.append_rows(columns)
            stored = len(columns[FEEDBACK_REQUEST_ID_COLUMN])
            status, document = 200, {"stored": stored}
        except Exception as e:  # every failure is an answer (_failure)
            status, document, headers = _failure(e, "storing feedback")
        finally:
            if admitted is not None:
                self.pool.leave(admitted)
        await _send_json(send, status, document, None, headers)
        self.metrics.observe_feedback(status, time.perf_counter() - started, stored)

    def _record(self, arrays: Batch, prediction: Prediction, request_id: str | None) -> None:
        """Metrics and the inference log, each on its own: one failing never costs the other."""
        try:
            if prediction.class_positions is not None:
                self.metrics.observe_classes(prediction.class_positions)
            elif self.predictor.is_classifier:
                self.metrics.observe_class_labels(prediction.values)
            else:
                self.metrics.observe_values(prediction.values)
        except Exception:
            logger.exception("prediction metrics update failed")
        if self.inference_log is not None:
            try:
                self.inference_log.append(
                    arrays, prediction.values, request_id, prediction.probabilities
                )
            except Exception:
                logger.exception("inference log append failed")
                self.metrics.inference_log_failed()
        if self.live_quality is not None and request_id is not None:
            self.live_quality.observe(request_id, prediction.values)
