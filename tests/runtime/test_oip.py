"""The Open Inference Protocol (v2, REST) beside /predict on the same port, spoken by a real
client (tritonclient[http]) and with the specification's own JSON examples, against a real
server process: metadata, both tabular input shapes, outputs, errors, and that an OIP prediction
is counted, logged and takes feedback like any other (issue 17 item 2)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from tritonclient.utils import InferenceServerException
from tritonclient.utils import np_to_triton_dtype as triton_dtype

from mlkube.api.modelversion import Column
from mlkube.layout import LOG_REQUEST_ID_COLUMN
from mlkube.runtime import artifacts
from mlkube.runtime.protocol.dataplane import DataPlane
from mlkube.runtime.protocol.rest.v2_endpoints import V2Endpoints
from mlkube.runtime.protocol.settings import ENV_INFERENCE_LOG_URI, ServeSettings
from tests.runtime.servers import (
    IRIS_FEATURES,
    SERVE_COMMAND,
    IrisArtifact,
    ServerProcess,
    model_env,
    save_iris_artifact,
    start_server,
)

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def iris_artifact(tmp_path_factory: pytest.TempPathFactory) -> IrisArtifact:
    return save_iris_artifact(tmp_path_factory.mktemp("iris"))


@pytest.fixture(scope="module")
def server(
    iris_artifact: IrisArtifact, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("oip-server")
    env = model_env(iris_artifact, **{ENV_INFERENCE_LOG_URI: str(work / "log")})
    process = start_server(SERVE_COMMAND, env, work / "server.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as connected:
        yield connected


def _column_inputs(frame: pd.DataFrame, datatype: str = "FP64") -> list[triton.InferInput]:
    dtype = np.float32 if datatype == "FP32" else np.float64
    inputs = []
    for name in IRIS_FEATURES:
        tensor = triton.InferInput(name, [len(frame)], datatype)
        tensor.set_data_from_numpy(frame[name].to_numpy(dtype), binary_data=False)
        inputs.append(tensor)
    return inputs


def _outputs(*names: str) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=False) for name in names]


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")
    assert not client.is_model_ready("iris", "2")
    assert not client.is_model_ready("penguins")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "mlkube" and metadata["extensions"] == []


def test_model_metadata_comes_from_the_input_schema(
    client: triton.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("iris", "1")
    assert metadata == client.get_model_metadata("iris")
    assert (metadata["name"], metadata["versions"]) == ("iris", ["1"])
    assert metadata["inputs"] == [
        {"name": name, "datatype": "FP64", "shape": [-1]} for name in IRIS_FEATURES
    ]
    assert metadata["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_one_input_per_column(
    client: triton.InferenceServerClient, iris_artifact: IrisArtifact, datatype: str
) -> None:
    sample = iris_artifact.features.iloc[[0, 1, 50, 75, 100, 149]]
    result = client.infer("iris", _column_inputs(sample, datatype), model_version="1")
    sent = sample.astype(np.float32).astype(np.float64) if datatype == "FP32" else sample
    np.testing.assert_array_equal(result.as_numpy("predict"), iris_artifact.estimator.predict(sent))
    np.testing.assert_allclose(
        result.as_numpy("predict_proba"), iris_artifact.estimator.predict_proba(sent), rtol=1e-9
    )
    answer = result.get_response()
    assert (answer["model_name"], answer["model_version"]) == ("iris", "1")
    assert [o["shape"] for o in answer["outputs"]] == [[6], [6, 3]]


def test_one_2d_tensor_in_schema_order(
    client: triton.InferenceServerClient, iris_artifact: IrisArtifact
) -> None:
    sample = iris_artifact.features.iloc[[3, 70, 140]]
    tensor = triton.InferInput("input-0", [3, 4], "FP32")
    tensor.set_data_from_numpy(sample.to_numpy(np.float32), binary_data=False)
    result = client.infer("iris", [tensor], outputs=_outputs("predict"), request_id="t-1")
    sent = sample.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(result.as_numpy("predict"), iris_artifact.estimator.predict(sent))
    answer = result.get_response()
    assert [o["name"] for o in answer["outputs"]] == ["predict"], "only what was asked for"
    assert answer["id"] == "t-1"


def test_the_requested_outputs_are_the_answer(
    client: triton.InferenceServerClient, iris_artifact: IrisArtifact
) -> None:
    sample = iris_artifact.features.iloc[[5]]
    result = client.infer("iris", _column_inputs(sample), outputs=_outputs("predict_proba"))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predict_proba"]
    assert result.as_numpy("predict_proba").shape == (1, 3)


def _refusal(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), caught.value.message()


def test_client_errors(client: triton.InferenceServerClient, iris_artifact: IrisArtifact) -> None:
    sample = iris_artifact.features.iloc[[0, 1]]
    status, message = _refusal(lambda: client.infer("penguins", _column_inputs(sample)))
    assert status == "404" and "'penguins' is not served here" in message, message
    status, message = _refusal(
        lambda: client.infer("iris", _column_inputs(sample), model_version="7")
    )
    assert status == "404" and "no version '7'" in message and "'1'" in message, message
    status, message = _refusal(lambda: client.get_model_metadata("iris", "7"))
    assert status == "404", message

    wrong = _column_inputs(sample)
    wrong[1] = triton.InferInput("sepal_width", [2], "BYTES")
    wrong[1].set_data_from_numpy(np.array(["3.5", "3.0"], dtype=object), binary_data=False)
    status, message = _refusal(lambda: client.infer("iris", wrong))
    assert status == "400" and "input 'sepal_width' has datatype BYTES" in message, message

    status, message = _refusal(lambda: client.infer("iris", _column_inputs(sample)[:3]))
    assert status == "400" and "input 'petal_width' is missing" in message, message

    narrow = triton.InferInput("input-0", [2, 3], "FP64")
    narrow.set_data_from_numpy(sample.to_numpy()[:, :3], binary_data=False)
    status, message = _refusal(lambda: client.infer("iris", [narrow]))
    assert status == "400" and "input 'input-0' has shape [2, 3]" in message, message

    status, message = _refusal(
        lambda: client.infer("iris", _column_inputs(sample), outputs=_outputs("decision"))
    )
    assert status == "400" and "output 'decision'" in message, message


def test_binary_tensor_data_is_refused_with_what_to_do(
    client: triton.InferenceServerClient, iris_artifact: IrisArtifact
) -> None:
    """tritonclient's default: Triton's binary extension, which this server does not take."""
    tensor = triton.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(iris_artifact.features.iloc[[0]].to_numpy())  # binary_data=True
    status, message = _refusal(lambda: client.infer("iris", [tensor]))
    assert status == "400" and "binary_data=False" in message, message


# The specification's example (inference_rest.md, "Inference Request Examples"), as written: its
# input0 is no column of this model, its input1's shape [3] holds three values but has one.
SPEC_REQUEST = {
    "id": "42",
    "inputs": [
        {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
        {"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True]},
    ],
    "outputs": [{"name": "output0"}],
}


def test_the_specification_examples(server: ServerProcess, iris_artifact: IrisArtifact) -> None:
    unknown = httpx.post(f"{server.url}/v2/models/mymodel/infer", json=SPEC_REQUEST)
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}, unknown.text
    refused = httpx.post(f"{server.url}/v2/models/iris/infer", json=SPEC_REQUEST)
    assert refused.status_code == 400, refused.text
    assert refused.json() == {"error": "output 'output0' is not one of the model's outputs "
                              "(predict, predict_proba)"}  # fmt: skip
    del SPEC_REQUEST["outputs"]
    refused = httpx.post(f"{server.url}/v2/models/iris/infer", json=SPEC_REQUEST)
    assert refused.status_code == 400 and "input 'input1'" in refused.json()["error"]

    # The same example with this model's input: a [2, 4] tensor, nested row-major data.
    sample = iris_artifact.features.iloc[[0, 100]]
    request = {
        "id": "42",
        "inputs": [
            {"name": "input0", "shape": [2, 4], "datatype": "FP64",
             "data": sample.to_numpy().tolist()},
        ],
        "outputs": [{"name": "predict"}],
    }  # fmt: skip
    answer = httpx.post(f"{server.url}/v2/models/iris/versions/1/infer", json=request)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == "42"
    expected = iris_artifact.estimator.predict(sample).tolist()
    assert answer.json() == {
        "model_name": "iris",
        "model_version": "1",
        "id": "42",
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [2], "data": expected}],
    }


def test_probes_paths_and_methods(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.url}/v2/models/iris/ready").json() == {"name": "iris", "ready": True}
    assert httpx.get(f"{server.url}/v2/models/iris/infer").status_code == 405
    assert httpx.post(f"{server.url}/v2/models/iris").status_code == 405
    assert httpx.get(f"{server.url}/v2/models/iris/explain").status_code == 404
    assert httpx.get(f"{server.url}/livez").status_code == 200, "BentoML's own probes stay"


def _requests(server: ServerProcess, code: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mlkube_requests_total" and sample.labels["code"] == code
    )


def _infer(server: ServerProcess, frame: pd.DataFrame, request_id: str) -> httpx.Response:
    inputs = [
        {"name": name, "shape": [len(frame)], "datatype": "FP64", "data": frame[name].tolist()}
        for name in IRIS_FEATURES
    ]
    return httpx.post(
        f"{server.url}/v2/models/iris/infer", json={"id": request_id, "inputs": inputs}
    )


def test_an_oip_prediction_is_counted_and_takes_feedback(
    server: ServerProcess, iris_artifact: IrisArtifact
) -> None:
    ok, bad = _requests(server, "2xx"), _requests(server, "4xx")
    assert _infer(server, iris_artifact.features.iloc[[0, 1]], "fb-1").status_code == 200
    assert httpx.post(f"{server.url}/v2/models/iris/infer", json={"inputs": []}).status_code == 400
    assert (_requests(server, "2xx"), _requests(server, "4xx")) == (ok + 1, bad + 1)
    labels = {
        "feedback": [{"requestId": "fb-1-0", "label": 0}, {"requestId": "fb-1-1", "label": 0}]
    }
    stored = httpx.post(f"{server.url}/feedback", json=labels)
    assert (stored.status_code, stored.json()) == (200, {"stored": 2})


# The fresh-eyes tester's bodies: each value beyond its datatype, once scored as sent (INT8 1000,
# FP16 1e10 as infinity), and INT32 1.5 worded as the model's column type instead of the input's.
BEYOND_THEIR_DATATYPE = [
    ("INT8", [1000, 2], "is INT8 but holds 1000 at index 0: INT8 takes integers from -128 to 127"),
    ("UINT8", [-1, 2], "is UINT8 but holds -1 at index 0: UINT8 takes integers from 0 to 255"),
    ("FP16", [1e10, 2], "is FP16 but holds 10000000000.0 at index 0: FP16 takes finite numbers"),
    ("FP32", [1e300, 2], "is FP32 but holds 1e+300 at index 0: FP32 takes finite numbers"),
    ("INT32", [1.5, 2], "is INT32 but holds 1.5 at index 0: INT32 takes integers"),
]


def test_a_value_beyond_its_datatype_is_a_400_counted_as_4xx(
    server: ServerProcess, iris_artifact: IrisArtifact
) -> None:
    """Triton and KServe decode into the declared datatype; a value it cannot hold is the
    client's error, counted as a 4xx (never a 5xx, which canary analysis counts against the
    model)."""
    sample = iris_artifact.features.iloc[[0, 1]]
    counted = {code: _requests(server, code) for code in ("2xx", "4xx", "5xx")}
    for datatype, data, words in BEYOND_THEIR_DATATYPE:
        inputs = [
            {"name": name, "shape": [2], "datatype": "FP64", "data": sample[name].tolist()}
            for name in IRIS_FEATURES[:3]
        ]
        inputs.append({"name": "petal_width", "shape": [2], "datatype": datatype, "data": data})
        answer = httpx.post(f"{server.url}/v2/models/iris/infer", json={"inputs": inputs})
        assert answer.status_code == 400, answer.text
        assert answer.json() == {"error": answer.json()["error"]}
        assert answer.json()["error"].startswith(f"input 'petal_width' {words}"), answer.text
    refused = len(BEYOND_THEIR_DATATYPE)
    assert {code: _requests(server, code) for code in counted} == counted | {
        "4xx": counted["4xx"] + refused
    }


def test_every_datatype_within_its_range_is_taken(
    client: triton.InferenceServerClient, iris_artifact: IrisArtifact
) -> None:
    """tritonclient's JSON of each numeric datatype, at its bounds where a float column holds
    them: the model scores the values as sent."""
    sample = iris_artifact.features.iloc[[0, 1]]
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
                  np.uint64, np.float16, np.float32):  # fmt: skip
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
        values = np.array([info.min, info.max], dtype=dtype)
        inputs = _column_inputs(sample)[:3]
        width = triton.InferInput("petal_width", [2], triton_dtype(dtype))
        width.set_data_from_numpy(values, binary_data=False)
        result = client.infer("iris", [*inputs, width], outputs=_outputs("predict"))
        expected = sample.assign(petal_width=values.astype(np.float64))
        assert (
            result.as_numpy("predict").tolist()
            == iris_artifact.estimator.predict(expected).tolist()
        ), dtype


def test_an_oip_prediction_is_in_the_inference_log(
    iris_artifact: IrisArtifact, tmp_path: Path
) -> None:
    env = model_env(iris_artifact, **{ENV_INFERENCE_LOG_URI: str(tmp_path / "log")})
    process = start_server(SERVE_COMMAND, env, tmp_path / "server.log")
    try:
        process.wait_ready()
        assert _infer(process, iris_artifact.features.iloc[[7, 8, 9]], "logged").status_code == 200
    finally:
        process.stop()
    table = pq.read_table(next((tmp_path / "log" / "iris-v1").glob("*.parquet")))
    assert table.column(LOG_REQUEST_ID_COLUMN).to_pylist() == ["logged-0", "logged-1", "logged-2"]
    assert (
        table.column("sepal_length").to_pylist()
        == iris_artifact.features.iloc[7:10]["sepal_length"].tolist()
    )


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A pipeline over string, int, bool and float columns with string class labels."""
    work = tmp_path_factory.mktemp("mixed")
    frame = pd.DataFrame(
        {
            "colour": ["red", "blue", "red", "green"] * 10,
            "count": list(range(40)),
            "fresh": [True, False] * 20,
            "weight": np.linspace(0.5, 4.0, 40),
        }
    )
    target = np.where(frame["count"] > 19, "large", "small")
    model = make_pipeline(
        ColumnTransformer(
            [("colour", OneHotEncoder(handle_unknown="ignore"), ["colour"])],
            remainder="passthrough",
        ),
        LogisticRegression(max_iter=1000),
    ).fit(frame, target)
    digest = artifacts.save_model(str(work / "model"), model)
    schema = artifacts.ModelSchema(
        task="classification",
        target="size",
        columns=[
            Column(name="colour", type="string"),
            Column(name="count", type="int"),
            Column(name="fresh", type="bool"),
            Column(name="weight", type="float"),
        ],
        classes=["large", "small"],
    )
    artifacts.write_json(str(work / "model" / artifacts.SCHEMA_FILE), schema.to_json())
    env = {
        "MLKUBE_MODEL_URI": str(work / "model"),
        "MLKUBE_MODEL_SHA256": digest,
        "MLKUBE_MODEL_NAME": "fruit",
    }
    process = start_server(SERVE_COMMAND, env, work / "server.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_columns_of_every_type_with_their_datatypes(mixed_server: ServerProcess) -> None:
    with triton.InferenceServerClient(f"127.0.0.1:{mixed_server.port}") as client:
        metadata = client.get_model_metadata("fruit")
        assert "versions" not in metadata, "no MLKUBE_MODEL_VERSION_NUMBER: no versions"
        assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
            ("colour", "BYTES"), ("count", "INT64"), ("fresh", "BOOL"), ("weight", "FP64"),
        ]  # fmt: skip
        assert metadata["outputs"][0] == {"name": "predict", "datatype": "BYTES", "shape": [-1]}
        columns = {
            "colour": ("BYTES", np.array(["red", "green"], dtype=object)),
            "count": ("INT32", np.array([3, 35], dtype=np.int32)),
            "fresh": ("BOOL", np.array([True, False])),
            "weight": ("FP32", np.array([0.7, 3.9], dtype=np.float32)),
        }
        inputs = []
        for name, (datatype, values) in columns.items():
            tensor = triton.InferInput(name, [2, 1], datatype)
            tensor.set_data_from_numpy(values.reshape(2, 1), binary_data=False)
            inputs.append(tensor)
        result = client.infer("fruit", inputs)
        assert result.as_numpy("predict").tolist() == ["small", "large"]
        assert client.is_model_ready("fruit") and not client.is_model_ready("fruit", "1")


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        (
            {"count": ("FP64", [3.5])},
            "input 'count' has datatype FP64, but column 'count' is int",
        ),
        ({"count": ("INT64", [True])}, "input 'count' is INT64 but holds bool True at index 0"),
        ({"colour": ("BYTES", [7])}, "input 'colour' is BYTES but holds 7 at index 0"),
        ({"fresh": ("BOOL", [None])}, "input 'fresh' must be bool, got null in row 0"),
        ({"weight": ("INT64", [1.5])}, "input 'weight' is INT64 but holds 1.5 at index 0"),
        ({"count": ("INT8", [300])}, "input 'count' is INT8 but holds 300 at index 0"),
    ],
)
def test_a_bad_column_is_a_400_naming_the_input(
    mixed_server: ServerProcess, inputs: dict[str, tuple[str, list[Any]]], words: str
) -> None:
    good = {
        "colour": ("BYTES", ["red"]),
        "count": ("INT64", [3]),
        "fresh": ("BOOL", [True]),
        "weight": ("FP64", [1.0]),
    }
    body = {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": [len(data)], "data": data}
            for name, (datatype, data) in (good | inputs).items()
        ]
    }
    answer = httpx.post(f"{mixed_server.url}/v2/models/fruit/infer", json=body)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"error"} and words in answer.json()["error"], answer.text


def test_a_tensor_is_for_all_numeric_models(mixed_server: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    answer = httpx.post(f"{mixed_server.url}/v2/models/fruit/infer", json=body)
    assert answer.status_code == 400
    assert "column 'colour' is string: send one input per column" in answer.json()["error"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[1, 2]", 'request body must be {"inputs"'),
        (b'{"inputs": {"a": 1}}', '"inputs" must be a non-empty list'),
        (b'{"inputs": [7]}', "inputs[0] must be an object"),
        (b'{"inputs": [{"name": "a", "shape": [-1], "datatype": "FP64", "data": [1]}]}',
         "shape must be a list of non-negative integers"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FLOAT", "data": [1]}]}',
         "datatype string 'FLOAT' is not one of"),
        (b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP64", "data": [[1], 2]}]}',
         "data mixes arrays and values"),
        (b'{"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, NaN, 4]}]}',
         "NaN or Infinity"),
        (b'{"inputs": [{"name": "a", "shape": [0, 4], "datatype": "FP64", "data": []}]}',
         "the request has no rows"),
        (b'{"parameters": {"content_type": "base64"}, "inputs": [{"name": "a", "shape": [1], '
         b'"datatype": "BYTES", "data": ["x"]}]}', "content_type 'base64'"),
    ],
)  # fmt: skip
def test_malformed_requests_are_400(server: ServerProcess, body: bytes, words: str) -> None:
    answer = httpx.post(f"{server.url}/v2/models/iris/infer", content=body)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"], answer.text


def test_the_row_cap_holds_for_oip(iris_artifact: IrisArtifact, tmp_path: Path) -> None:
    process = start_server(
        SERVE_COMMAND, model_env(iris_artifact, MLKUBE_MAX_ROWS="3"), tmp_path / "server.log"
    )
    try:
        process.wait_ready()
        data = [[5.1, 3.5, 1.4, 0.2]] * 4
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [4, 4], "data": data}]}
        answer = httpx.post(f"{process.url}/v2/models/iris/infer", json=body)
        assert answer.status_code == 413 and "MLKUBE_MAX_ROWS" in answer.json()["error"]
        body["inputs"][0]["shape"] = [3, 4]  # type: ignore[index]
        body["inputs"][0]["data"] = data[:3]  # type: ignore[index]
        assert httpx.post(f"{process.url}/v2/models/iris/infer", json=body).status_code == 200
    finally:
        process.stop()


def test_metadata_json_is_what_the_client_reads(server: ServerProcess) -> None:
    """Plain JSON too: a client without tritonclient reads the same document."""
    answer = httpx.get(f"{server.url}/v2/models/iris/versions/1")
    assert answer.headers["content-type"] == "application/json"
    assert json.loads(answer.content)["platform"] == "sklearn_joblib"


def _asgi_call(app: Any, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """One request to an ASGI app in-process: its status and JSON answer."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_not_ready_and_busy_are_503(iris_artifact: IrisArtifact, tmp_path: Path) -> None:
    """In-process: readiness is a 503 before the server starts and once it closes, and a large
    request past the thread pool's places a 503 in the protocol's words."""
    settings = ServeSettings.from_env(
        model_env(iris_artifact, MLKUBE_MAX_CONCURRENCY="1", MLKUBE_MAX_QUEUED="0")
    )
    plane = DataPlane(
        settings, iris_artifact.estimator, artifacts.load_schema(str(iris_artifact.directory))
    )
    v2 = V2Endpoints(plane, settings)
    status, answer = _asgi_call(v2, "GET", "/v2/health/ready")
    assert status == 503 and "not ready" in answer["error"]
    plane.start()
    assert _asgi_call(v2, "GET", "/v2/models/iris/versions/1/ready") == (
        200,
        {"name": "iris", "ready": True},
    )
    rows = 3000  # a body over 64 KiB: decoded in the pool
    big = {
        "inputs": [
            {"name": "x", "shape": [rows, 4], "datatype": "FP64",
             "data": [5.123456789, 3.523456789, 1.423456789, 0.223456789] * rows},
        ]
    }  # fmt: skip
    admitted = plane.pool.admit()  # the one place is taken
    status, answer = _asgi_call(v2, "POST", "/v2/models/iris/infer", json.dumps(big).encode())
    assert status == 503 and set(answer) == {"error"} and "busy" in answer["error"], answer
    plane.pool.leave(admitted)
    status, answer = _asgi_call(v2, "POST", "/v2/models/iris/infer", json.dumps(big).encode())
    assert status == 200 and answer["outputs"][0]["shape"] == [rows]
    plane.close()
    assert _asgi_call(v2, "GET", "/v2/health/ready")[0] == 503
