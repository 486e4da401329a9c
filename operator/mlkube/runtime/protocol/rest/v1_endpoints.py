"""mlkube's ``POST /predict`` and KServe's v1 protocol (``POST /v1/models/<name>:predict``,
``GET /v1/models/<name>``): rows in ``instances`` (objects by column name, or lists in the input
schema's order, as KServe v1 clients send them) or columns in ``inputs``.

Request::

    {"instances": [{"sepal_length": 5.1, ...}, ...]}     rows as objects
    {"instances": [[5.1, 3.5, 1.4, 0.2], ...]}           rows as lists, in schema order
    {"inputs": {"sepal_length": [5.1, ...], ...}}        columns
    optionally "id": "..." (the request id)

Answer: ``{"predictions": [...], "probabilities": [[...], ...], "requestIds": [...],
"modelVersion": "..."}``. A malformed body is a 400 and a schema violation a 422, both
``{"error": "...", "column": "..."}``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from itertools import accumulate
from operator import itemgetter
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import orjson

from mlkube.api.modelversion import ColumnType
from mlkube.runtime.protocol.columns import check_types, number_matrix
from mlkube.runtime.protocol.dataplane import (
    DataPlane,
    Inputs,
    Prediction,
    Predictor,
)
from mlkube.runtime.protocol.errors import RequestError, cut, decode_json, values
from mlkube.runtime.protocol.http import (
    ASGIReceive,
    ASGIScope,
    ASGISend,
    mlkube_error,
    send_json,
)

PREDICT_PATH = "/predict"
MODELS_PREFIX = "/v1/models/"
PREDICT_VERB = ":predict"
_SHAPES = (
    'request body must be {"instances": [{...}, ...]} (rows as objects), {"instances": [[...], '
    '...]} (rows as lists in schema order) or {"inputs": {"col": [...]}}'
)


def decode_request(body: bytes) -> dict[str, Any]:
    """The JSON document, with exactly one of ``instances`` and ``inputs``."""
    document = decode_json(body)
    if type(document) is not dict or ("instances" in document) is ("inputs" in document):
        raise RequestError(400, _SHAPES)
    return document


def parse_request(
    body: bytes,
    column_types: Mapping[str, ColumnType],
    nullable: frozenset[str] = frozenset(),
) -> dict[str, list[Any]]:
    """Decode and validate a request body into one list of values per schema column.

    ``null`` is a value only in the `nullable` columns: those the model was trained to impute.
    """
    return check_request(decode_request(body), column_types, nullable)


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
    for name, column in columns.items():
        check_types(name, column_types[name], column, name in nullable)
    return columns


def _rows_to_columns(rows: Any, column_types: Mapping[str, ColumnType]) -> dict[str, list[Any]]:
    if not isinstance(rows, list) or not rows:
        raise RequestError(400, '"instances" must be a non-empty list of objects or lists')
    names = list(column_types)
    kinds = set(map(type, rows))
    if kinds == {list}:
        if set(map(len, rows)) != {len(names)}:
            _diagnose_rows(rows, column_types)
        return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))
    # C-speed checks for the common case; _diagnose_rows finds what is wrong otherwise.
    if kinds != {dict} or set(map(len, rows)) != {len(names)}:
        _diagnose_rows(rows, column_types)
    try:
        picked = list(map(itemgetter(*names), rows))
    except KeyError:
        _diagnose_rows(rows, column_types)
    if len(names) == 1:
        return {names[0]: picked}
    return dict(zip(names, map(list, zip(*picked, strict=True)), strict=True))


def _diagnose_rows(rows: list[Any], column_types: Mapping[str, ColumnType]) -> NoReturn:
    names = column_types.keys()
    first = type(rows[0])
    for index, row in enumerate(rows):
        if type(row) not in (dict, list):
            raise RequestError(
                400,
                f"instances[{index}] must be an object of column values or a list of them in "
                f"the input schema's order ({', '.join(names)})",
            )
        if type(row) is not first:
            raise RequestError(
                400,
                f"instances[{index}] is {'a list' if type(row) is list else 'an object'} where "
                f"instances[0] is {'a list' if first is list else 'an object'}: send every row "
                "the same way",
            )
        if type(row) is list:
            if len(row) != len(names):
                raise RequestError(
                    422,
                    f"instances[{index}] has {values(len(row))}; the model takes "
                    f"{len(names)}, in this order: {', '.join(names)}",
                )
            continue
        missing = [name for name in names if name not in row]
        if missing:
            raise RequestError(
                422, f"instances[{index}] is missing column {missing[0]!r}", missing[0]
            )
        unknown = [name for name in row if name not in column_types]
        if unknown:
            raise RequestError(
                422,
                f"instances[{index}] has unknown column {cut(repr(unknown[0]))}; "
                f"the model takes {', '.join(names)}",
                cut(unknown[0]),
            )
    raise AssertionError("_diagnose_rows called on valid rows")


def _check_columnar(inputs: Any, column_types: Mapping[str, ColumnType]) -> dict[str, list[Any]]:
    if not isinstance(inputs, dict):
        raise RequestError(400, '"inputs" must be an object of column name to list of values')
    for name in column_types:
        if name not in inputs:
            raise RequestError(422, f"inputs is missing column {name!r}", name)
    for name, column in inputs.items():
        if name not in column_types:
            raise RequestError(
                422,
                f"inputs has unknown column {cut(repr(name))}; "
                f"the model takes {', '.join(column_types)}",
                cut(name),
            )
        if not isinstance(column, list) or not column:
            raise RequestError(400, f"inputs[{name!r}] must be a non-empty list", name)
    lengths = Counter(len(inputs[name]) for name in column_types)
    rows = lengths.most_common(1)[0][0]  # the odd column out is the one to name
    for name in column_types:
        if len(inputs[name]) != rows:
            raise RequestError(
                422,
                f"inputs[{name!r}] has {values(len(inputs[name]))} where the other columns "
                f"have {values(rows)}: every column needs one value per row",
                name,
            )
    return {name: inputs[name] for name in column_types}


def _row_count(document: dict[str, Any]) -> int:
    """The rows a decoded body holds, as far as its shape says (0 where it is not a list)."""
    if "instances" in document:
        rows = document["instances"]
        return len(rows) if type(rows) is list else 0
    inputs = document["inputs"]
    if type(inputs) is not dict:
        return 0
    return max([len(v) for v in inputs.values() if type(v) is list], default=0)


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


class V1Endpoint:
    """Reads ``/predict`` (and KServe v1) bodies into the predictor's inputs and words the
    answer."""

    def wording(self, error: RequestError) -> tuple[int, dict[str, Any]]:
        return mlkube_error(error)

    def __init__(self, predictor: Predictor, model_version: str) -> None:
        self.predictor = predictor
        self.model_version = model_version
        self._width = len(predictor.feature_order)

    def read(self, body: bytes) -> Inputs:
        """A request body as the model's input and the log's columns, validated; more rows than
        the predictor's `max_rows` is a 413 before any of them is looked at."""
        document = decode_request(body)
        rows = _row_count(document)
        predictor = self.predictor
        predictor.check_rows(rows)
        body_id = document.get("id")
        matrix = self._valid_float_matrix(document) if predictor.float_matrix else None
        if matrix is not None:
            return predictor.from_matrix(matrix, body_id, rows)
        columns = check_request(document, predictor.column_types, predictor.nullable)
        arrays = predictor.arrays(columns)
        return Inputs(arrays, predictor.features(arrays), body_id, rows)

    def _valid_float_matrix(self, document: dict[str, Any]) -> npt.NDArray[np.float64] | None:
        """The rows as a float matrix in the fitted column order, checked at C speed: numbers
        only, every column and no other. None for anything else, which `check_request` then
        examines value by value to say what is wrong. Every number is finite: orjson refuses
        NaN, Infinity and numbers beyond float64, and an int beyond it fails the conversion."""
        if "instances" in document:
            rows = document["instances"]
            if type(rows) is not list or not rows:
                return None
            if type(rows[0]) is list:
                return self._lists_matrix(rows)
            return self._rows_matrix(rows)
        matrix = self._columns_matrix(document["inputs"])
        return None if matrix is None else matrix.T

    def _rows_matrix(self, rows: list[Any]) -> npt.NDArray[np.float64] | None:
        width = self._width
        try:  # a row that is not an object has no len() or no string keys: TypeError
            if sum(map(len, rows)) != len(rows) * width:
                return None  # with no column missing (KeyError below), a row has an extra
            picked = list(map(self.predictor.row_values, rows))
        except (KeyError, TypeError):
            return None
        if width == 1:  # itemgetter of one name gives the value, not a tuple
            return number_matrix([picked], (len(rows), 1))
        return number_matrix(picked, (len(rows), width))

    def _lists_matrix(self, rows: list[Any]) -> npt.NDArray[np.float64] | None:
        """Rows as lists in schema order (KServe v1), as a matrix in the fitted order."""
        width = self._width
        try:  # a row that is not a list: len() fails, or its items are no numbers
            if set(map(len, rows)) != {width}:  # an object's keys are no numbers either
                return None
        except TypeError:
            return None
        matrix = number_matrix(rows, (len(rows), width))
        return None if matrix is None else self.predictor.in_feature_order(matrix)

    def _columns_matrix(self, inputs: Any) -> npt.NDArray[np.float64] | None:
        """The columns as a (columns, rows) matrix."""
        names = self.predictor.feature_order
        if type(inputs) is not dict or len(inputs) != len(names):
            return None
        try:
            picked = [inputs[name] for name in names]
        except KeyError:
            return None
        if {type(v) for v in picked} != {list} or len({len(v) for v in picked}) != 1:
            return None
        if not picked[0]:
            return None
        return number_matrix(picked, (len(names), len(picked[0])))

    def answer(self, prediction: Prediction, request_id: str, inputs: Inputs) -> dict[str, Any]:
        answer: dict[str, Any] = {"predictions": prediction.values}
        if prediction.probabilities is not None:
            answer["probabilities"] = prediction.probabilities
        answer["requestIds"] = row_ids_json(request_id, len(prediction.values))
        answer["modelVersion"] = self.model_version
        return answer


class KServeV1:
    """KServe's v1 paths for the one model this server holds: ``GET /v1/models/<name>`` (ready)
    and ``POST /v1/models/<name>:predict`` (what ``/predict`` answers)."""

    def __init__(self, plane: DataPlane, endpoint: V1Endpoint, model_name: str) -> None:
        self.plane = plane
        self.endpoint = endpoint
        self.model_name = model_name

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        name = scope["path"].removeprefix(MODELS_PREFIX)
        if name.endswith(PREDICT_VERB):
            name = name.removesuffix(PREDICT_VERB)
            refusal = None if name == self.model_name else self._unknown(name)
            await self.plane.infer(scope, receive, send, self.endpoint, refusal)
            return
        if scope["method"] != "GET":
            await send_json(send, 405, {"error": "use GET, or POST to <name>:predict"})
        elif name != self.model_name:
            await send_json(send, 404, self._unknown(name).body())
        else:
            await send_json(send, 200, {"name": name, "ready": True})

    def _unknown(self, name: str) -> RequestError:
        return RequestError(
            404,
            f"model {cut(repr(name))} is not served here; this server serves {self.model_name!r}",
        )
