"""The pure parts of the Open Inference Protocol over gRPC: a tensor's values from raw or typed
contents, each malformed tensor refused naming its input, each value held to its datatype as
REST's are, and the status code of each refusal."""

from __future__ import annotations

import struct
from typing import Any

import grpc
import numpy as np
import pytest

from mlkube.runtime.protocol import grpc_service_pb2 as pb
from mlkube.runtime.protocol.errors import RequestError
from mlkube.runtime.protocol.grpc_server import grpc_code, parameters, raw_values, tensor_of
from mlkube.runtime.protocol.rest.v2_endpoints import Tensor
from tests.unit.test_oip_datatypes import float_model_endpoint

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


def _typed(datatype: str, field: str, values: list[Any]) -> Input:
    tensor = Input(name="petal_width_cm", datatype=datatype, shape=[len(values)])
    getattr(tensor.contents, field).extend(values)
    return tensor


def _sepal(rows: int) -> Tensor:
    return Tensor("sepal_length_cm", [rows], "FP64", [5.1] * rows)


@pytest.mark.parametrize(
    ("tensor", "raw", "words"),
    [
        (_typed("INT8", "int_contents", [1000, 2]), None, "is INT8 but holds 1000 at index 0"),
        (_typed("INT16", "int_contents", [2, -40000]), None, "is INT16 but holds -40000 at index 1"),
        (_typed("UINT8", "uint_contents", [256, 2]), None, "is UINT8 but holds 256 at index 0"),
        (_typed("FP64", "fp64_contents", [1.0, np.nan]), None, "is FP64 but holds nan at index 1"),
        (_typed("FP32", "fp32_contents", [np.inf, 1.0]), None, "is FP32 but holds inf at index 0"),
        (
            Input(name="petal_width_cm", datatype="FP16", shape=[2]),
            np.array([np.inf, 2], "<f2").tobytes(),
            "is FP16 but holds inf at index 0",
        ),
        (
            Input(name="petal_width_cm", datatype="FP64", shape=[2]),
            np.array([1.0, np.nan]).tobytes(),
            "is FP64 but holds nan at index 1",
        ),
    ],
)  # fmt: skip
def test_a_value_beyond_its_datatype_is_invalid_argument_naming_it(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, words: str
) -> None:
    """Typed contents are wider than their datatype (int_contents holds any int32 for INT8), raw
    floats may be NaN: decoded without fault, then refused by the check REST's JSON takes."""
    decoded = tensor_of(0, tensor, raw)
    with pytest.raises(RequestError) as refused:
        float_model_endpoint().inputs([_sepal(2), decoded], None, None)
    assert refused.value.status == 400
    assert grpc_code(refused.value.status) == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message.startswith(f"input 'petal_width_cm' {words}: "), refused.value


def test_narrow_datatypes_within_their_range_are_taken() -> None:
    endpoint = float_model_endpoint()
    for tensor, raw in [
        (_typed("INT8", "int_contents", [-128, 127]), None),
        (_typed("UINT8", "uint_contents", [0, 255]), None),
        (Input(name="petal_width_cm", datatype="INT8", shape=[2]), bytes([0x80, 0x7F])),
        (
            Input(name="petal_width_cm", datatype="FP16", shape=[2]),
            np.array([-65504, 0.5], "<f2").tobytes(),
        ),
    ]:
        inputs = endpoint.inputs([_sepal(2), tensor_of(0, tensor, raw)], None, None)
        assert np.asarray(inputs.features)[:, 1].tolist() in ([-128, 127], [0, 255], [-65504, 0.5])
