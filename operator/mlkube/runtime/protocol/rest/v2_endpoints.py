"""The Open Inference Protocol (KServe's v2) over REST, for the one model this server holds.

Source: kserve/open-inference-protocol, ``specification/protocol/inference_rest.md``.

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata).
- ``GET /v2/models/<name>[/versions/<version>]``: model metadata, from the input schema: one
  input per column (``FP64``, ``INT64``, ``BYTES`` or ``BOOL``, shape ``[-1]``); outputs
  ``predict`` (shape ``[-1]``) and, for classifiers with probabilities, ``predict_proba``
  (``FP64``, ``[-1, classes]``, in the order of the model's ``classes_``).
- ``GET .../ready`` and ``POST .../infer``.

Tabular input comes in either of the two shapes clients send:

- one input per schema column, named by it, shape ``[N]`` or ``[N, 1]``, with its own datatype
  (MLServer's ``pd`` content type): a float column takes ``FP16``/``FP32``/``FP64`` and integer
  datatypes, an int column integer datatypes, a string column ``BYTES``, a bool column ``BOOL``;
- one ``[N, F]`` tensor of a numeric datatype holding every column in the input schema's order,
  for models whose columns are all numeric (any input name).

``data`` is JSON, flat or nested in row-major order; Triton's binary tensor extension is refused.
Each value must fit its datatype (``datatypes``: ``INT8`` holds -128 to 127, ``FP32`` finite
numbers within float32's range), as Triton and KServe decode it.
The request's ``outputs`` choose among ``predict`` and ``predict_proba`` (default: both where
the model has them); the answer carries the request's ``id`` (or the one the server gave it,
see ``request_ids``), ``model_name`` and ``model_version``. Errors are ``{"error": "..."}``:
400 for a bad request (naming the input), 404 for an unknown model, version or path, 413 over
the row cap, 503 when the server is busy or not ready.
"""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from mlkube.api.modelversion import ColumnType
from mlkube.runtime.protocol.columns import number_matrix
from mlkube.runtime.protocol.dataplane import DataPlane, Inputs, Prediction, Predictor
from mlkube.runtime.protocol.datatypes import check_array, check_values, fits
from mlkube.runtime.protocol.errors import RequestError, cut, decode_json, describe
from mlkube.runtime.protocol.http import (
    ASGIReceive,
    ASGIScope,
    ASGISend,
    encode,
    send_json,
)
from mlkube.runtime.protocol.settings import ServeSettings

V2_PREFIX = "/v2"
PREDICT_OUTPUT = "predict"
PROBABILITIES_OUTPUT = "predict_proba"
SERVER_NAME = "mlkube"
PLATFORM = "sklearn_joblib"
BINARY_HEADER = b"inference-header-content-length"
"""Triton's binary tensor data extension: the JSON part's length, binary tensors after it."""

DATATYPE_KINDS: dict[str, ColumnType] = {
    "BOOL": "bool",
    "BYTES": "string",
    **{name: "float" for name in ("FP16", "FP32", "FP64")},
    **{f"{sign}INT{bits}": "int" for sign in ("", "U") for bits in (8, 16, 32, 64)},
}
"""Which schema type each of the protocol's datatypes carries."""
COLUMN_DATATYPES: dict[ColumnType, str] = {
    "float": "FP64",
    "int": "INT64",
    "string": "BYTES",
    "bool": "BOOL",
}
"""The datatype the metadata gives each schema type."""
_CONTENT_TYPES = frozenset({"pd", "np", "str"})
"""MLServer's content types that describe what this reader takes as it is."""


def oip_error(error: RequestError) -> tuple[int, dict[str, Any]]:
    """The protocol's wording: ``{"error": "..."}``, a schema violation being a 400."""
    return (400 if error.status == 422 else error.status), {"error": error.message}


def _datatype(values: np.ndarray[Any, Any]) -> str:
    """The protocol's datatype of a model's predictions."""
    kind = values.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"


class Tensor(NamedTuple):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    """Flat, in row-major order."""


class V2Endpoint:
    """Reads ``POST .../infer`` bodies into the predictor's inputs and words the answer."""

    def wording(self, error: RequestError) -> tuple[int, dict[str, Any]]:
        return oip_error(error)

    def __init__(self, predictor: Predictor, model_name: str, version: str | None) -> None:
        self.predictor = predictor
        self.model_name = model_name
        self.version = version
        types = predictor.column_types
        self._columns = ", ".join(types)
        self._width = len(types)
        self._not_numeric = next(
            (name for name, kind in types.items() if kind not in ("float", "int")), None
        )
        self._labels = {name: f"input {name!r}" for name in types}
        self.outputs: tuple[str, ...] = (
            (PREDICT_OUTPUT, PROBABILITIES_OUTPUT)
            if predictor.has_probabilities
            else (PREDICT_OUTPUT,)
        )
        self.predict_datatype = _datatype(predictor.classes) if predictor.is_classifier else "FP64"

    def metadata(self) -> dict[str, Any]:
        """The model metadata response."""
        outputs = [{"name": PREDICT_OUTPUT, "datatype": self.predict_datatype, "shape": [-1]}]
        if PROBABILITIES_OUTPUT in self.outputs:
            outputs.append(
                {
                    "name": PROBABILITIES_OUTPUT,
                    "datatype": "FP64",
                    "shape": [-1, len(self.predictor.classes)],
                }
            )
        return {
            "name": self.model_name,
            **({"versions": [self.version]} if self.version else {}),
            "platform": PLATFORM,
            "inputs": [
                {"name": name, "datatype": COLUMN_DATATYPES[kind], "shape": [-1]}
                for name, kind in self.predictor.column_types.items()
            ],
            "outputs": outputs,
        }

    def read(self, body: bytes) -> Inputs:
        document = decode_json(body)
        if type(document) is not dict:
            raise RequestError(
                400,
                'request body must be {"inputs": [{"name": ..., "shape": [...], "datatype": ..., '
                '"data": [...]}, ...]}',
            )
        tensors = document.get("inputs")
        if type(tensors) is not list or not tensors:
            raise RequestError(
                400,
                '"inputs" must be a non-empty list of tensors, each {"name", "shape", '
                '"datatype", "data"}',
            )
        check_content_type(document.get("parameters"), "the request")
        outputs = self.requested(document.get("outputs"))
        parsed = [_tensor(index, tensor) for index, tensor in enumerate(tensors)]
        return self.inputs(parsed, document.get("id"), outputs)

    def inputs(self, parsed: list[Tensor], body_id: Any, outputs: Any) -> Inputs:
        """The request's tensors (each consistent in itself) as the model's inputs: one per
        column, or one [N, F] tensor; any protocol that carries the Open Inference Protocol's
        tensors (REST's JSON, gRPC's messages) reads them here."""
        types = self.predictor.column_types
        first = parsed[0]
        if (
            len(parsed) == 1
            and len(first.shape) == 2
            and (first.name not in types or first.shape[1] != 1)
        ):
            return self._from_tensor(first, body_id, outputs)
        for tensor in parsed:
            if tensor.name not in types:
                raise RequestError(
                    400,
                    f"input {cut(repr(tensor.name))} is not a column of the model: send one "
                    f"input per column ({self._columns}) or one [N, {self._width}] tensor of "
                    "them in that order",
                )
        return self._from_columns(parsed, body_id, outputs)

    def requested(self, outputs: Any) -> tuple[str, ...] | None:
        """The outputs the request names; None for the default (all)."""
        if outputs is None:
            return None
        if type(outputs) is not list:
            raise RequestError(400, '"outputs" must be a list of {"name": ...}')
        names: list[str] = []
        for output in outputs:
            name = output.get("name") if type(output) is dict else None
            if name not in self.outputs:
                raise RequestError(
                    400,
                    f"output {_named(name)} is not "
                    "one of the model's outputs "
                    f"({', '.join(self.outputs)})",
                )
            if name not in names:
                names.append(name)
        return tuple(names) or None

    def _from_columns(self, tensors: list[Tensor], body_id: Any, outputs: Any) -> Inputs:
        predictor = self.predictor
        types = predictor.column_types
        by_name: dict[str, Tensor] = {}
        for tensor in tensors:
            if tensor.name in by_name:
                raise RequestError(400, f"input {tensor.name!r} is given twice")
            by_name[tensor.name] = tensor
        for name in types:
            if name not in by_name:
                raise RequestError(
                    400,
                    f"input {name!r} is missing: the model takes one input per column "
                    f"({self._columns}) or one [N, {self._width}] tensor of them in that order",
                )
        rows = tensors[0].shape[0]
        for tensor in tensors:
            label = self._labels[tensor.name]
            if len(tensor.shape) > 2 or tensor.shape[1:] not in ([], [1]):
                raise RequestError(
                    400, f"{label} has shape {tensor.shape}: one column is [N] or [N, 1]"
                )
            if tensor.shape[0] != rows:
                raise RequestError(
                    400,
                    f"{label} has {tensor.shape[0]} rows where {self._labels[tensors[0].name]} "
                    f"has {rows}: every column needs one value per row",
                )
            kind, column = DATATYPE_KINDS[tensor.datatype], types[tensor.name]
            if kind != column and not (column == "float" and kind == "int"):
                raise RequestError(
                    400,
                    f"{label} has datatype {tensor.datatype}, but column {tensor.name!r} is "
                    f"{column}: send {_datatypes_for(column)}",
                )
        _check_rows(rows)
        predictor.check_rows(rows)
        if predictor.float_matrix and all(t.datatype[:2] == "FP" for t in tensors):
            parts = [by_name[name].data for name in predictor.feature_order]
            matrix = number_matrix(parts, (self._width, rows))
            if matrix is not None:
                if not fits(min(t.datatype for t in tensors), matrix):  # the narrowest FP
                    for row, name in enumerate(predictor.feature_order):
                        tensor = by_name[name]
                        check_array(self._labels[name], tensor.datatype, matrix[row], tensor.data)
                return predictor.from_matrix(matrix.T, body_id, rows, outputs)
        columns = {name: by_name[name].data for name in types}
        for name, tensor in by_name.items():
            check_values(self._labels[name], tensor.datatype, tensor.data, tensor.shape)
        return predictor.from_columns(columns, body_id, rows, outputs, self._labels)

    def _from_tensor(self, tensor: Tensor, body_id: Any, outputs: Any) -> Inputs:
        predictor = self.predictor
        label = _input(tensor.name)
        if self._not_numeric is not None:
            raise RequestError(
                400,
                f"{label} is a [N, F] tensor, which only models whose columns are all numeric "
                f"take; column {self._not_numeric!r} is "
                f"{predictor.column_types[self._not_numeric]}: send one input per column",
            )
        rows, width = tensor.shape
        if width != self._width:
            raise RequestError(
                400,
                f"{label} has shape {tensor.shape}; the model takes {self._width} columns, in "
                f"this order: {self._columns}",
            )
        kind = DATATYPE_KINDS[tensor.datatype]
        if kind not in ("float", "int"):
            raise RequestError(
                400, f"{label} has datatype {tensor.datatype}; a [N, F] tensor is numeric"
            )
        _check_rows(rows)
        predictor.check_rows(rows)
        if kind == "float" and predictor.float_matrix:
            matrix = number_matrix([tensor.data], (rows, width))
            if matrix is not None:
                check_array(label, tensor.datatype, matrix, tensor.data, tensor.shape)
                return predictor.from_matrix(
                    predictor.in_feature_order(matrix), body_id, rows, outputs
                )
        data = tensor.data
        check_values(label, tensor.datatype, data, tensor.shape)
        columns = {name: data[j::width] for j, name in enumerate(predictor.schema_order)}
        labels = {
            name: f"{label} column {j} ({name!r})" for j, name in enumerate(predictor.schema_order)
        }
        return predictor.from_columns(columns, body_id, rows, outputs, labels)

    def answer(self, prediction: Prediction, request_id: str, inputs: Inputs) -> dict[str, Any]:
        rows = len(prediction.values)
        outputs: list[dict[str, Any]] = []
        for name in inputs.outputs or self.outputs:
            if name == PREDICT_OUTPUT:
                outputs.append(
                    {
                        "name": PREDICT_OUTPUT,
                        "datatype": self.predict_datatype,
                        "shape": [rows],
                        "data": prediction.values,
                    }
                )
            elif prediction.probabilities is not None:
                probabilities = prediction.probabilities
                outputs.append(
                    {
                        "name": PROBABILITIES_OUTPUT,
                        "datatype": "FP64",
                        "shape": [rows, probabilities.shape[1]],
                        "data": probabilities.reshape(-1),
                    }
                )
        answer: dict[str, Any] = {"model_name": self.model_name}
        if self.version is not None:
            answer["model_version"] = self.version
        answer["id"] = request_id
        answer["outputs"] = outputs
        return answer


def _named(value: Any) -> str:
    """A name as an error quotes it: a string as itself, anything else by its type."""
    return cut(repr(value)) if type(value) is str else describe(value)


def _datatypes_for(column: ColumnType) -> str:
    accepted = [
        name
        for name, kind in DATATYPE_KINDS.items()
        if kind == column or (column == "float" and kind == "int")
    ]
    return ", ".join(accepted)


def _check_rows(rows: int) -> None:
    if rows < 1:
        raise RequestError(400, "the request has no rows: a prediction needs at least one")


def check_content_type(parameters: Any, where: str) -> None:
    """A 400 for request or input `parameters` (JSON) that ask for what this server does not
    take: binary data, or a content type other than MLServer's plain ones."""
    if parameters is None:
        return
    if type(parameters) is not dict:
        raise RequestError(400, f"the parameters of {where} must be an object")
    if "binary_data_size" in parameters:
        raise RequestError(
            400,
            f"{where} has binary data (Triton's binary tensor extension), which this server "
            "does not take: send the data as JSON (tritonclient: binary_data=False)",
        )
    content_type = parameters.get("content_type")
    if content_type is not None and content_type not in _CONTENT_TYPES:
        raise RequestError(
            400,
            f"{where} has content_type {_named(content_type)}; this server takes "
            f"{', '.join(sorted(_CONTENT_TYPES))} (the data as JSON values)",
        )


def _tensor(index: int, tensor: Any) -> Tensor:
    """One request input, checked for its own consistency; its data flattened."""
    if type(tensor) is not dict:
        raise RequestError(
            400, f"inputs[{index}] must be an object with name, shape, datatype and data"
        )
    name = tensor.get("name")
    if type(name) is not str or not name:
        raise RequestError(400, f"inputs[{index}].name must be a non-empty string")
    shape = tensor.get("shape")
    if type(shape) is not list or not shape or set(map(type, shape)) != _INT or min(shape) < 0:
        raise RequestError(
            400,
            f"{_input(name)}: shape must be a list of non-negative integers, got {describe(shape)}",
        )
    datatype = tensor.get("datatype")
    if datatype not in DATATYPE_KINDS:
        raise RequestError(
            400,
            f"{_input(name)}: datatype {describe(datatype)} is not one of "
            f"{', '.join(DATATYPE_KINDS)}",
        )
    parameters = tensor.get("parameters")
    if parameters is not None:
        check_content_type(parameters, _input(name))
    data = tensor.get("data")
    if type(data) is not list:
        raise RequestError(
            400, f"{_input(name)}: data must be a JSON array (binary tensor data is not taken)"
        )
    while data and type(data[0]) is list:  # nested in row-major order: flatten
        if set(map(type, data)) != _LIST:
            raise RequestError(400, f"{_input(name)}: data mixes arrays and values at one level")
        data = list(chain.from_iterable(data))
    size = shape[0] if len(shape) == 1 else math.prod(shape)
    if len(data) != size:
        raise RequestError(
            400, f"{_input(name)}: shape {shape} holds {size} values, but data has {len(data)}"
        )
    return Tensor(name, shape, datatype, data)


_INT = {int}
_LIST = {list}


def _input(name: str) -> str:
    return f"input {cut(repr(name))}"


class V2Endpoints:
    """Routes ``/v2...`` paths: health, metadata, readiness, inference."""

    def __init__(self, plane: DataPlane, settings: ServeSettings) -> None:
        self.plane = plane
        self.endpoint = V2Endpoint(
            plane.predictor, settings.model_name, settings.model_version_number
        )
        self.model_name = settings.model_name
        self.version = settings.model_version_number
        self.server_metadata: dict[str, Any] = {
            "name": SERVER_NAME,
            "version": _mlkube_version(),
            "extensions": [],
        }
        self._server_metadata = encode(self.server_metadata)
        self._model_metadata = encode(self.endpoint.metadata())
        prefix = f"{V2_PREFIX}/models/{self.model_name}"
        self._infer_paths = {f"{prefix}/infer"} | (
            {f"{prefix}/versions/{self.version}/infer"} if self.version else set()
        )
        """This model's inference paths, answered without parsing the path."""

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["path"] in self._infer_paths:
            await self.plane.infer(scope, receive, send, self.endpoint, _binary(scope["headers"]))
            return
        parts = scope["path"].removeprefix(V2_PREFIX).strip("/").split("/")
        answer: tuple[int, Any]
        refusal: RequestError | None = None
        if parts[0] == "models" and len(parts) >= 2:
            name, tail, version = parts[1], parts[2:], None
            if tail[:1] == ["versions"] and len(tail) >= 2:
                version, tail = tail[1], tail[2:]
            refusal = self.unknown(name, version)
            if tail == ["infer"]:
                await self.plane.infer(
                    scope, receive, send, self.endpoint, refusal or _binary(scope["headers"])
                )
                return
            if tail == []:
                answer = 200, self._model_metadata
            elif tail == ["ready"]:
                answer = self._ready({"name": name})
            else:
                answer = 404, {"error": f"no such path: {cut(scope['path'])}"}
        elif parts == [""]:
            answer = 200, self._server_metadata
        elif parts == ["health", "live"]:
            answer = 200, {"live": True}
        elif parts == ["health", "ready"]:
            answer = self._ready({})
        else:
            answer = 404, {"error": f"no such path: {cut(scope['path'])}"}
        if scope["method"] != "GET":
            await send_json(send, 405, {"error": "use GET"})
        elif refusal is not None and answer[0] != 404:
            await send_json(send, refusal.status, {"error": refusal.message})
        else:
            await send_json(send, *answer)

    def _ready(self, document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """200 with ``"ready": true``, or a 503 while the server starts or shuts down."""
        if not self.plane.ready:
            return 503, {"error": "the server is not ready: it is starting or shutting down"}
        return 200, document | {"ready": True}

    def unknown(self, name: str, version: str | None) -> RequestError | None:
        """A 404 for a model or version this server does not hold."""
        if name != self.model_name:
            return RequestError(
                404,
                f"model {cut(repr(name))} is not served here; this server serves "
                f"{self.model_name!r}",
            )
        if version is not None and version != self.version:
            served = f"version {self.version!r}" if self.version else "no numbered version"
            return RequestError(
                404, f"model {name!r} has no version {cut(repr(version))} here; it serves {served}"
            )
        return None


def _binary(headers: list[tuple[bytes, bytes]]) -> RequestError | None:
    for name, _ in headers:
        if name == BINARY_HEADER:
            return RequestError(
                400,
                "the request has binary tensor data (Inference-Header-Content-Length, Triton's "
                "binary extension), which this server does not take: send the data as JSON "
                "(tritonclient: binary_data=False)",
            )
    return None


def _mlkube_version() -> str:
    try:
        return version("mlkube")
    except PackageNotFoundError:
        return "unknown"
