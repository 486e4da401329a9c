"""Every value of an Open Inference Protocol tensor fits its declared datatype (the
specification's tensor data types), whichever protocol carried it: REST's JSON `data` as the
endpoint reads it, and a refusal names the input, its datatype, the value and its index."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyRegressor

from mlkube.api.modelversion import Column
from mlkube.runtime import artifacts
from mlkube.runtime.protocol.dataplane import Predictor, read
from mlkube.runtime.protocol.datatypes import BOUNDS, check_array, check_values
from mlkube.runtime.protocol.errors import RequestError
from mlkube.runtime.protocol.http import failure
from mlkube.runtime.protocol.rest.v2_endpoints import V2Endpoint, oip_error

pytestmark = pytest.mark.unit

COLUMNS = ["sepal_length_cm", "petal_width_cm"]


def float_model_endpoint() -> V2Endpoint:
    """A real (dummy) regressor over two float columns: the all-float fast path."""
    frame = pd.DataFrame({name: [1.0, 2.0, 3.0] for name in COLUMNS})
    model = DummyRegressor().fit(frame, [0.0, 1.0, 2.0])
    schema = artifacts.ModelSchema(
        task="regression", target="y", columns=[Column(name=n, type="float") for n in COLUMNS]
    )
    return V2Endpoint(Predictor(model, schema), "flowers", None)


def _dumps(document: Any) -> bytes:
    return json.dumps(document).encode()  # orjson's dumps stops at 64 bits


def _body(datatype: str, data: list[Any], other: str = "FP64") -> bytes:
    return _dumps(
        {
            "inputs": [
                {"name": "sepal_length_cm", "datatype": other, "shape": [2], "data": [5.1, 4.9]},
                {"name": "petal_width_cm", "datatype": datatype, "shape": [2], "data": data},
            ]
        }
    )


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("INT8", [1000, 2], "is INT8 but holds 1000 at index 0: INT8 takes integers from -128 to 127"),
        ("UINT8", [2, -1], "is UINT8 but holds -1 at index 1: UINT8 takes integers from 0 to 255"),
        ("INT16", [40000, 2], "is INT16 but holds 40000 at index 0"),
        ("UINT64", [2**64, 2], "is UINT64 but holds 1.8446744073709552e+19 at index 0"),  # a float in JSON
        ("FP16", [1e10, 2], "is FP16 but holds 10000000000.0 at index 0: FP16 takes finite numbers from -65504 to 65504"),
        ("FP16", [2, 65520], "is FP16 but holds 65520 at index 1"),
        ("FP32", [1e300, 2], "is FP32 but holds 1e+300 at index 0: FP32 takes finite numbers"),
        ("INT32", [1.5, 2], "is INT32 but holds 1.5 at index 0: INT32 takes integers"),
        ("INT64", [2, True], "is INT64 but holds bool True at index 1"),
        ("FP64", [2, "3.5"], "is FP64 but holds string '3.5' at index 1"),
    ],
)  # fmt: skip
def test_rest_a_value_beyond_its_datatype_is_a_400_naming_input_datatype_value_and_index(
    datatype: str, data: list[Any], words: str
) -> None:
    with pytest.raises(RequestError) as refused:
        float_model_endpoint().read(_body(datatype, data))
    assert refused.value.status == 400
    assert refused.value.message.startswith(f"input 'petal_width_cm' {words}"), (
        refused.value.message
    )


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("INT8", [-128, 127]),
        ("UINT8", [0, 255]),
        ("UINT64", [0, 2**64 - 1]),
        ("INT32", [3.0, -2]),  # a whole number written with a fraction is that integer
        ("FP16", [65504, -0.5]),
        ("FP32", [3.4e38, 1]),
        ("FP64", [1e300, -1e-300]),
    ],
)
def test_rest_values_within_their_datatype_are_taken(datatype: str, data: list[Any]) -> None:
    inputs = float_model_endpoint().read(_body(datatype, data))
    assert inputs.rows == 2
    np.testing.assert_array_equal(np.asarray(inputs.features)[:, 1], np.asarray(data, float))


def test_rest_each_column_is_held_to_its_own_datatype() -> None:
    """An FP64 column may hold what an FP16 one beside it may not."""
    body = _dumps(
        {
            "inputs": [
                {"name": "sepal_length_cm", "datatype": "FP64", "shape": [1], "data": [1e10]},
                {"name": "petal_width_cm", "datatype": "FP16", "shape": [1], "data": [0.5]},
            ]
        }
    )
    assert float_model_endpoint().read(body).rows == 1
    with pytest.raises(RequestError, match=r"'sepal_length_cm' is FP16 but holds 1e\+20"):
        float_model_endpoint().read(
            _body("FP64", [1.0, 2.0], other="FP16").replace(b"5.1", b"1e20")
        )


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("FP32", [[1.0, 2.0], [1e300, 3.0]], "input 'x' is FP32 but holds 1e+300 at index [1, 0]"),
        ("INT8", [[1, 2], [3, 1000]], "input 'x' is INT8 but holds 1000 at index [1, 1]"),
        ("UINT16", [[1, -2], [3, 4]], "input 'x' is UINT16 but holds -2 at index [0, 1]"),
    ],
)
def test_rest_an_n_by_f_tensor_names_the_row_and_column(
    datatype: str, data: list[list[Any]], words: str
) -> None:
    body = {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2], "data": data}]}
    with pytest.raises(RequestError) as refused:
        float_model_endpoint().read(_dumps(body))
    assert refused.value.status == 400 and refused.value.message.startswith(words)


@pytest.mark.parametrize("datatype", sorted(BOUNDS))
def test_each_numeric_datatype_takes_its_bounds_and_refuses_past_them(datatype: str) -> None:
    low, high = BOUNDS[datatype]
    check_values("input 'x'", datatype, [low, high])
    past = high * 2 if isinstance(high, float) else high + 1
    with pytest.raises(RequestError, match=rf"input 'x' is {datatype} but holds .* at index 1"):
        check_values("input 'x'", datatype, [low, past])


@pytest.mark.parametrize(
    ("datatype", "values", "index"),
    [
        ("FP64", [1.0, float("nan")], 1),
        ("FP32", [float("-inf"), 1.0], 0),
        ("FP64", [1.0, 10**400], 1),
        ("BOOL", [True, 1], 1),
        ("BYTES", ["a", b"b"], 1),
        ("INT64", [1, None, 2**63], 2),
    ],
)
def test_what_is_no_value_of_the_datatype_is_refused(
    datatype: str, values: list[Any], index: int
) -> None:
    with pytest.raises(RequestError, match=rf"is {datatype} but holds .* at index {index}:"):
        check_values("input 'x'", datatype, values)


def test_nulls_are_the_columns_business() -> None:
    check_values("input 'x'", "INT8", [None, 3])
    check_values("input 'x'", "BOOL", [None, True])


def test_an_array_is_checked_at_numpys_speed_and_worded_from_what_was_sent() -> None:
    sent = [1.0, float("nan")]
    check_array("input 'x'", "FP64", np.array([1.0, 2.0]), [1.0, 2.0])
    with pytest.raises(RequestError, match="holds nan at index 1"):
        check_array("input 'x'", "FP64", np.array(sent), sent)


class _Broken:
    """A decoder that fails in a way it did not foresee."""

    def read(self, body: bytes) -> Any:
        raise ValueError("a decoder's own bug")

    def wording(self, error: RequestError) -> tuple[int, dict[str, Any]]:
        return oip_error(error)

    def answer(self, *_: Any) -> Any:
        raise AssertionError


def test_a_decoder_failure_is_the_requests_400_not_a_5xx() -> None:
    """Canary analysis counts 5xx against the model: a body must not be able to make one."""
    with pytest.raises(RequestError) as refused:
        read(_Broken(), b"{}")
    status, body, _ = failure(refused.value, "prediction", oip_error)
    assert status == 400
    assert body == {"error": "the request could not be decoded (ValueError); see the server log"}
