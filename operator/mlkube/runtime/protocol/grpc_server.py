"""The Open Inference Protocol (KServe's v2) over gRPC: ``inference.GRPCInferenceService`` on a
port of its own (``MLKUBE_GRPC_PORT``; the operator's pods use 8081, KServe's gRPC port), served
by grpcio's asyncio server on the HTTP server's event loop, over the same data plane.

Source: kserve/open-inference-protocol, ``specification/protocol/inference_grpc.md``; the
messages are in ``grpc_service.proto`` beside this file (how to regenerate the code is there).

- ``ServerLive``, ``ServerReady``, ``ModelReady``: the answer's ``live``/``ready`` (ready is
  false while the server starts or shuts down, and for a model or version it does not serve).
- ``ServerMetadata``, ``ModelMetadata``: what REST's ``GET /v2`` and ``GET /v2/models/<name>``
  answer (``rest.v2_endpoints``).
- ``ModelInfer``: the tensors as REST takes them (one input per column, or one [N, F] tensor),
  their values in typed ``contents`` or in ``raw_input_contents`` (little-endian, row-major;
  a BYTES element is a 4-byte little-endian length and its bytes). The answer's outputs carry
  their values the way the request did (raw in, raw out). The request's ``id`` is echoed, else
  the ``x-request-id`` metadata, else a new id (``request_ids``); rows are logged, counted and
  take feedback as any other prediction. Each value must fit its datatype, typed or raw
  (``datatypes``: ``int_contents`` 1000 is no ``INT8``, a raw ``FP64`` NaN no number), checked
  where REST's JSON is (``V2Endpoint.inputs``).

Errors are gRPC status codes with the REST answer's message: ``INVALID_ARGUMENT`` for a bad
request (naming the input; also a request over ``MLKUBE_MAX_ROWS``, and any request the server
fails to decode), ``NOT_FOUND`` for a model or version not served here, ``UNAVAILABLE`` when the
server is busy (with ``retry-after`` and ``grpc-retry-pushback-ms`` trailers) or not ready,
``INTERNAL`` when the prediction failed. The request metrics count each call by the HTTP status
REST would have answered (`HTTP_STATUSES`), so canary analysis weighs gRPC calls with HTTP's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import grpc
import numpy as np
import numpy.typing as npt

from mlkube.runtime.protocol import grpc_service_pb2 as pb
from mlkube.runtime.protocol.dataplane import Answer, DataPlane, Inputs, Prediction
from mlkube.runtime.protocol.errors import RequestError, cut
from mlkube.runtime.protocol.http import MAX_BODY_BYTES, REQUEST_ID_HEADER, Headers
from mlkube.runtime.protocol.rest.v2_endpoints import (
    DATATYPE_KINDS,
    PREDICT_OUTPUT,
    Tensor,
    V2Endpoints,
    check_content_type,
    oip_error,
)

logger = logging.getLogger("mlkube.serve")

SERVICE = "inference.GRPCInferenceService"
GRACE_SECONDS = 5.0
"""How long calls in flight may finish once the server stops."""
NOT_READY = "the server is not ready: it is starting or shutting down"

GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The gRPC code of the data plane's (HTTP's) status; another 4xx is INVALID_ARGUMENT, another
5xx INTERNAL. 413 is the request's own fault, not a quota: INVALID_ARGUMENT, not
RESOURCE_EXHAUSTED (which clients retry)."""

_RAW_DTYPES: dict[str, str] = {
    "BOOL": "u1",
    **{f"INT{bits}": f"<i{bits // 8}" for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": f"<u{bits // 8}" for bits in (8, 16, 32, 64)},
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
"""The little-endian layout of each datatype's raw contents (BYTES: length-prefixed)."""
_CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    **{f"INT{bits}": "int_contents" for bits in (8, 16, 32)},
    "INT64": "int64_contents",
    **{f"UINT{bits}": "uint_contents" for bits in (8, 16, 32)},
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Where each datatype's values are in typed contents (FP16 has no field: raw only)."""
_LENGTH = struct.Struct("<I")


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC status code of an HTTP status the data plane answered (not 200)."""
    code = GRPC_CODES.get(status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL


def parameters(values: Mapping[str, pb.InferParameter]) -> dict[str, Any] | None:
    """A message's ``parameters`` as the JSON object REST has them; None when empty."""
    if not values:
        return None
    plain: dict[str, Any] = {}
    for key, value in values.items():
        choice = value.WhichOneof("parameter_choice")
        plain[key] = None if choice is None else getattr(value, choice)
    return plain


def _input(name: str) -> str:
    return f"input {cut(repr(name))}"


def _strings(name: str, items: list[bytes]) -> list[str]:
    try:
        return [item.decode() for item in items]
    except UnicodeDecodeError as e:
        at = next(i for i, item in enumerate(items) if not _utf8(item))
        raise RequestError(
            400, f"{_input(name)}: BYTES value {at} is not UTF-8 ({e.reason})"
        ) from None


def _utf8(item: bytes) -> bool:
    try:
        item.decode()
    except UnicodeDecodeError:
        return False
    return True


def raw_values(name: str, datatype: str, raw: bytes, size: int) -> list[Any]:
    """`size` values of `datatype` from their raw contents (the protocol's row-major,
    little-endian layout; a BYTES element is a 4-byte little-endian length, then its bytes; a
    nonzero BOOL byte is true), as Python values; a 400 naming the input where the bytes do not
    hold them. Whether they fit the datatype (an FP64 NaN does not) is the endpoint's check."""
    if datatype == "BYTES":
        items: list[bytes] = []
        at = 0
        while at < len(raw) and len(items) <= size:
            if at + 4 > len(raw):
                break
            (length,) = _LENGTH.unpack_from(raw, at)
            at += 4
            if at + length > len(raw):
                break
            items.append(raw[at : at + length])
            at += length
        if at != len(raw) or len(items) != size:
            raise RequestError(
                400,
                f"{_input(name)}: its raw contents are not {size} BYTES values (each a 4-byte "
                "little-endian length, then that many bytes)",
            )
        return _strings(name, items)
    dtype = np.dtype(_RAW_DTYPES[datatype])
    if len(raw) != size * dtype.itemsize:
        raise RequestError(
            400,
            f"{_input(name)}: its raw contents have {len(raw)} bytes, but {size} {datatype} "
            f"values take {size * dtype.itemsize}",
        )
    array = np.frombuffer(raw, dtype)
    values: list[Any] = (array != 0 if datatype == "BOOL" else array).tolist()
    return values


def tensor_of(
    index: int, tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> Tensor:
    """One request input, checked for its own consistency, its values as Python values (what
    REST's JSON carries), read from `raw` (its ``raw_input_contents`` entry) or its typed
    contents."""
    name = tensor.name
    if not name:
        raise RequestError(400, f"inputs[{index}].name must be a non-empty string")
    shape = list(tensor.shape)
    if not shape or min(shape) < 0:
        raise RequestError(
            400, f"{_input(name)}: shape must be a non-empty list of non-negative integers"
        )
    datatype = tensor.datatype
    if datatype not in DATATYPE_KINDS:
        raise RequestError(
            400,
            f"{_input(name)}: datatype {cut(repr(datatype))} is not one of "
            f"{', '.join(DATATYPE_KINDS)}",
        )
    check_content_type(parameters(tensor.parameters), _input(name))
    size = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise RequestError(
                400,
                f"{_input(name)} has both contents and raw_input_contents: send its values in one",
            )
        return Tensor(name, shape, datatype, raw_values(name, datatype, raw, size))
    field = _CONTENTS.get(datatype)
    if field is None:
        raise RequestError(
            400, f"{_input(name)}: {datatype} values have no typed contents: send them raw"
        )
    contents = getattr(tensor.contents, field)
    if len(contents) != size:
        raise RequestError(
            400,
            f"{_input(name)}: shape {shape} holds {size} values, but its contents' {field} "
            f"has {len(contents)}",
        )
    if datatype == "BYTES":
        return Tensor(name, shape, datatype, _strings(name, list(contents)))
    # as they came (int_contents holds any int32 for INT8): whether they fit the datatype is
    # the endpoint's check, as for REST's JSON
    return Tensor(name, shape, datatype, list(contents))


class Requested(NamedTuple):
    """What a ModelInfer request asks of the answer (the `Inputs.outputs` of gRPC)."""

    names: tuple[str, ...] | None
    """The outputs asked for; None: all."""
    raw: bool
    """Values in ``raw_output_contents`` (the request sent raw contents)."""


_OUTPUT_CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT64": "int64_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _output_bytes(datatype: str, values: npt.NDArray[Any]) -> bytes:
    if datatype == "BYTES":
        encoded = [str(value).encode() for value in values]
        return b"".join(_LENGTH.pack(len(item)) + item for item in encoded)
    return np.ascontiguousarray(values, _RAW_DTYPES[datatype]).tobytes()


def _set_contents(
    output: pb.ModelInferResponse.InferOutputTensor, datatype: str, values: npt.NDArray[Any]
) -> None:
    field = getattr(output.contents, _OUTPUT_CONTENTS[datatype])
    if datatype == "BYTES":
        field.extend(str(value).encode() for value in values)
    else:
        field.extend(values.tolist())


class GRPCEndpoint:
    """Reads ModelInfer requests (their serialized bytes) into the predictor's inputs and
    answers with a serialized ModelInferResponse; the data plane's `Endpoint` for gRPC."""

    def __init__(self, v2: V2Endpoints) -> None:
        self.v2 = v2
        self.endpoint = v2.endpoint

    def wording(self, error: RequestError) -> tuple[int, dict[str, Any]]:
        return oip_error(error)

    def read(self, body: bytes) -> Inputs:
        try:
            request = pb.ModelInferRequest.FromString(body)
        except Exception:  # protobuf's DecodeError, whichever implementation raised it
            raise RequestError(400, "the request is not a ModelInferRequest message") from None
        refusal = self.v2.unknown(request.model_name, request.model_version or None)
        if refusal is not None:
            raise refusal
        if not request.inputs:
            raise RequestError(400, "the request has no inputs: send one per column, or one tensor")
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise RequestError(
                400,
                f"the request has {len(request.inputs)} inputs but {len(raw)} "
                "raw_input_contents: one each, in the order of inputs",
            )
        check_content_type(parameters(request.parameters), "the request")
        names = self.endpoint.requested([{"name": o.name} for o in request.outputs] or None)
        tensors = [
            tensor_of(index, tensor, raw[index] if raw else None)
            for index, tensor in enumerate(request.inputs)
        ]
        return self.endpoint.inputs(tensors, request.id or None, Requested(names, bool(raw)))

    def answer(self, prediction: Prediction, request_id: str, inputs: Inputs) -> bytes:
        """The serialized ModelInferResponse."""
        endpoint = self.endpoint
        requested: Requested = inputs.outputs
        response = pb.ModelInferResponse(model_name=endpoint.model_name, id=request_id)
        if endpoint.version is not None:
            response.model_version = endpoint.version
        rows = len(prediction.values)
        for name in requested.names or endpoint.outputs:
            if name == PREDICT_OUTPUT:
                datatype, shape, values = endpoint.predict_datatype, [rows], prediction.values
            elif prediction.probabilities is not None:
                probabilities = prediction.probabilities
                datatype, shape = "FP64", [rows, probabilities.shape[1]]
                values = probabilities.reshape(-1)
            else:
                continue
            output = response.outputs.add(name=name, datatype=datatype, shape=shape)
            if requested.raw:
                response.raw_output_contents.append(_output_bytes(datatype, values))
            else:
                _set_contents(output, datatype, values)
        return response.SerializeToString()


class GRPCServer:
    """``inference.GRPCInferenceService`` on `port`, answered by `plane` (and `v2`'s metadata)."""

    def __init__(self, plane: DataPlane, v2: V2Endpoints, port: int, host: str = "[::]") -> None:
        self.plane = plane
        self.v2 = v2
        self.endpoint = GRPCEndpoint(v2)
        self.address = f"{host}:{port}"
        self._server: grpc.aio.Server | None = None
        metadata = v2.endpoint.metadata()
        self._model_metadata = pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata.get("versions", []),
            platform=metadata["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**i) for i in metadata["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**o) for o in metadata["outputs"]],
        )
        server = v2.server_metadata
        self._server_metadata = pb.ServerMetadataResponse(
            name=server["name"], version=server["version"], extensions=server["extensions"]
        )

    async def start(self) -> None:
        """Listen and answer; an address that cannot be bound raises RuntimeError naming it."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_BODY_BYTES),
                ("grpc.so_reuseport", 0),  # a port another process holds is an error
            ]
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, self._handlers()),)
        )
        try:
            server.add_insecure_port(self.address)
        except RuntimeError as e:
            raise RuntimeError(f"the gRPC server cannot listen on {self.address}: {e}") from e
        await server.start()
        self._server = server
        logger.info("Open Inference Protocol over gRPC on %s", self.address)

    async def stop(self) -> None:
        """Stop taking calls; those in flight get `GRACE_SECONDS` to finish."""
        if self._server is not None:
            await self._server.stop(GRACE_SECONDS)
            self._server = None

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        def unary(
            call: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
            request: Any,
        ) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                call,
                request_deserializer=request.FromString if request is not None else None,
                response_serializer=_serialize,
            )

        return {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
            # bytes in, bytes out: the data plane decodes large requests off the event loop
            "ModelInfer": unary(self.model_infer, None),
        }

    async def server_live(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        known = self.v2.unknown(request.name, request.version or None) is None
        return pb.ModelReadyResponse(ready=known and self.plane.ready)

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return self._server_metadata

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        refusal = self.v2.unknown(request.name, request.version or None)
        if refusal is not None:
            await context.abort(grpc.StatusCode.NOT_FOUND, refusal.message)
        return self._model_metadata

    async def model_infer(self, body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """A prediction: the data plane's answer, counted and logged once it is sent."""
        started = time.perf_counter()
        plane = self.plane
        if plane.ready:
            headers: Headers = [
                (REQUEST_ID_HEADER, value.encode("latin-1"))
                for key, value in context.invocation_metadata() or ()
                if key == "x-request-id" and isinstance(value, str)
            ]
            answer = await plane.answer(self.endpoint, _given(body), headers, started)
        else:
            answer = Answer(503, {"error": NOT_READY}, None, (), None, None)
        asyncio.get_running_loop().call_soon(plane.answered, answer, started)
        if answer.status == 200:
            document: bytes = answer.document
            return document
        trailers = [
            (name.decode(), value.decode())
            for name, value in answer.headers
            if name == b"retry-after"
        ]
        if trailers:
            seconds = int(trailers[0][1])
            trailers.append(("grpc-retry-pushback-ms", str(seconds * 1000)))
        await context.abort(grpc_code(answer.status), answer.document["error"], tuple(trailers))
        raise AssertionError("abort raises")  # pragma: no cover


def _given(body: bytes) -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        return body

    return read


def _serialize(message: Any) -> bytes:
    """A response message's bytes; ModelInfer's answer is bytes already."""
    if type(message) is bytes:
        return message
    serialized: bytes = message.SerializeToString()
    return serialized
