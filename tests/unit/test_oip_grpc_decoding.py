"""The pure parts of the Open Inference Protocol over gRPC: a tensor's values from raw or typed
contents, each malformed tensor refused naming its input, and the status code of each refusal."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

from mlkube.runtime.protocol import grpc_service_pb2 as pb
from mlkube.runtime.protocol.errors import RequestError
from mlkube.runtime.protocol.grpc_server import grpc_code, parameters, raw_values, tensor_of
from mlkube.runtime.protocol.rest.v2_endpoints import Tensor

pytestmark = pytest.mark.unit

Input = pb.ModelInferRequest.InferInputTensor


def _bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (413, grpc.StatusCode.INVALID_ARGUMENT),  # the request's own fault: not a quota
        (405, grpc.StatusCode.INVALID_ARGUMENT),
        (404, grpc.StatusCode.NOT_FOUND),
        (503, grpc.StatusCode.UNAVAILABLE),
        (500, grpc.StatusCode.INTERNAL),
    ],
)
def test_each_refusal_has_its_grpc_code(status: int, code: grpc.StatusCode) -> None:
    assert grpc_code(status) == code


def test_raw_contents_are_little_endian_row_major() -> None:
    assert raw_values("x", "FP32", np.array([1.5, -2.0], "<f4").tobytes(), 2) == [1.5, -2.0]
    assert raw_values("x", "INT16", np.array([7, -8], "<i2").tobytes(), 2) == [7, -8]
    assert raw_values("x", "BOOL", bytes([1, 0, 1]), 3) == [True, False, True]
    assert raw_values("x", "BYTES", _bytes(b"red", b"", "grün".encode()), 3) == ["red", "", "grün"]


@pytest.mark.parametrize(
    ("datatype", "raw", "size", "words"),
    [
        ("FP64", np.zeros(3).tobytes(), 4, "raw contents have 24 bytes, but 4 FP64 values take 32"),
        ("BYTES", _bytes(b"a")[:-1], 1, "are not 1 BYTES values"),
        ("BYTES", _bytes(b"a", b"b"), 1, "are not 1 BYTES values"),
        ("BYTES", _bytes(b"a") + b"\x00", 1, "are not 1 BYTES values"),
        ("BYTES", _bytes(b"\xff"), 1, "BYTES value 0 is not UTF-8"),
        ("FP64", np.array([1.0, np.inf]).tobytes(), 2, "has inf at value 1"),
    ],
)
def test_raw_contents_that_do_not_hold_the_shape_are_refused(
    datatype: str, raw: bytes, size: int, words: str
) -> None:
    with pytest.raises(RequestError) as refused:
        raw_values("weight", datatype, raw, size)
    assert refused.value.status == 400
    assert "input 'weight'" in refused.value.message and words in refused.value.message


def test_typed_contents_of_each_datatype() -> None:
    tensor = Input(name="n", datatype="INT32", shape=[2, 1])
    tensor.contents.int_contents.extend([3, 4])
    assert tensor_of(0, tensor, None) == Tensor("n", [2, 1], "INT32", [3, 4])
    text = Input(name="s", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"blue")
    assert tensor_of(0, text, None).data == ["blue"]
    raw = Input(name="f", datatype="FP16", shape=[1])
    assert tensor_of(0, raw, np.array([0.5], "<f2").tobytes()).data == [0.5]


@pytest.mark.parametrize(
    ("tensor", "raw", "words"),
    [
        (Input(datatype="FP64", shape=[1]), None, "inputs[3].name must be a non-empty string"),
        (Input(name="x", datatype="FP64", shape=[]), None, "input 'x': shape must be"),
        (Input(name="x", datatype="FP64", shape=[-1]), None, "input 'x': shape must be"),
        (Input(name="x", datatype="FLOAT", shape=[1]), None, "datatype 'FLOAT' is not one of"),
        (Input(name="x", datatype="FP16", shape=[1]), None, "FP16 values have no typed contents"),
        (
            Input(name="x", datatype="FP64", shape=[2], contents=pb.InferTensorContents()),
            b"\x00" * 16,
            "input 'x' has both contents and raw_input_contents",
        ),
        (
            Input(
                name="x",
                datatype="FP64",
                shape=[2],
                contents=pb.InferTensorContents(int64_contents=[1, 2]),
            ),
            None,
            "shape [2] holds 2 values, but its contents' fp64_contents has 0",
        ),
        (
            Input(
                name="x",
                datatype="BYTES",
                shape=[1],
                parameters={"content_type": pb.InferParameter(string_param="base64")},
            ),
            None,
            "input 'x' has content_type 'base64'",
        ),
    ],
)
def test_malformed_tensors_are_400_naming_the_input(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, words: str
) -> None:
    with pytest.raises(RequestError) as refused:
        tensor_of(3, tensor, raw)
    assert refused.value.status == 400
    assert words in refused.value.message, refused.value.message


def test_parameters_read_as_rest_has_them() -> None:
    assert parameters({}) is None
    given = {
        "content_type": pb.InferParameter(string_param="pd"),
        "binary_data_size": pb.InferParameter(int64_param=16),
        "sorted": pb.InferParameter(bool_param=True),
        "unset": pb.InferParameter(),
    }
    assert parameters(given) == {
        "content_type": "pd",
        "binary_data_size": 16,
        "sorted": True,
        "unset": None,
    }
