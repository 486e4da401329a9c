"""The Open Inference Protocol (v2) over gRPC on its own port, spoken by a real client
(tritonclient[grpc], and its generated stubs for typed contents) against a real server process:
health, metadata, both tabular input shapes in raw and typed contents, errors as status codes,
request ids, and that a gRPC prediction is counted, logged and takes feedback like a REST one
(issue 17 item 3)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as triton
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException
from tritonclient.utils import np_to_triton_dtype as triton_dtype

from mlkube.api.modelversion import Column
from mlkube.layout import LOG_REQUEST_ID_COLUMN
from mlkube.runtime import artifacts
from mlkube.runtime.metrics import ServingMetrics
from mlkube.runtime.protocol import dataplane
from mlkube.runtime.protocol.dataplane import DataPlane
from mlkube.runtime.protocol.grpc_server import GRPCServer
from mlkube.runtime.protocol.rest.v2_endpoints import V2Endpoints
from mlkube.runtime.protocol.settings import ENV_GRPC_PORT, ENV_INFERENCE_LOG_URI, ServeSettings
from tests.runtime.servers import (
    IRIS_FEATURES,
    SERVE_COMMAND,
    IrisArtifact,
    free_port,
    model_env,
    save_iris_artifact,
    start_server,
)

pytestmark = pytest.mark.runtime


class GRPCServerProcess:
    """A server process and the address of its gRPC port."""

    def __init__(self, env: dict[str, str], directory: Path) -> None:
        self.grpc_port = free_port()
        self.http = start_server(
            SERVE_COMMAND, {**env, ENV_GRPC_PORT: str(self.grpc_port)}, directory / "server.log"
        )
        self.address = f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> GRPCServerProcess:
        self.http.wait_ready()
        return self

    def __exit__(self, *_: object) -> None:
        self.http.stop()


@pytest.fixture(scope="module")
def iris_artifact(tmp_path_factory: pytest.TempPathFactory) -> IrisArtifact:
    return save_iris_artifact(tmp_path_factory.mktemp("iris"))


@pytest.fixture(scope="module")
def server(
    iris_artifact: IrisArtifact, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GRPCServerProcess]:
    work = tmp_path_factory.mktemp("grpc-server")
    env = model_env(iris_artifact, **{ENV_INFERENCE_LOG_URI: str(work / "log")})
    with GRPCServerProcess(env, work) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: GRPCServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.address) as connected:
        yield connected


@pytest.fixture(scope="module")
def stub(server: GRPCServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """The client's own generated stub: for requests tritonclient's helpers do not make (typed
    contents)."""
    with grpc.insecure_channel(server.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _column_inputs(frame: pd.DataFrame, datatype: str = "FP64") -> list[triton.InferInput]:
    """One input per column; tritonclient sends their values as raw_input_contents."""
    dtype = np.float32 if datatype == "FP32" else np.float64
    inputs = []
    for name in IRIS_FEATURES:
        tensor = triton.InferInput(name, [len(frame)], datatype)
        tensor.set_data_from_numpy(frame[name].to_numpy(dtype))
        inputs.append(tensor)
    return inputs


def _refusal(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), caught.value.message()


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")
    assert not client.is_model_ready("iris", "2")
    assert not client.is_model_ready("penguins")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "mlkube"
    assert "extensions" not in metadata, "none (an empty repeated field is left out of JSON)"


def test_model_metadata_is_what_rest_answers(
    client: triton.InferenceServerClient, server: GRPCServerProcess
) -> None:
    metadata = client.get_model_metadata("iris", "1", as_json=True)
    assert metadata == client.get_model_metadata("iris", as_json=True)
    rest = httpx.get(f"{server.http.url}/v2/models/iris/versions/1").json()
    for tensors in ("inputs", "outputs"):  # protobuf's JSON writes int64 as strings
        for tensor in metadata[tensors]:
            tensor["shape"] = [int(size) for size in tensor["shape"]]
    assert metadata == rest
    assert metadata["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_one_input_per_column_in_raw_contents(
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
    assert (answer.model_name, answer.model_version) == ("iris", "1")
    assert [list(o.shape) for o in answer.outputs] == [[6], [6, 3]]
    assert len(answer.raw_output_contents) == 2, "raw in, raw out"


def test_one_2d_tensor_in_schema_order(
    client: triton.InferenceServerClient, iris_artifact: IrisArtifact
) -> None:
    sample = iris_artifact.features.iloc[[3, 70, 140]]
    tensor = triton.InferInput("input-0", [3, 4], "FP32")
    tensor.set_data_from_numpy(sample.to_numpy(np.float32))
    result = client.infer(
        "iris", [tensor], outputs=[triton.InferRequestedOutput("predict")], request_id="g-1"
    )
    sent = sample.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(result.as_numpy("predict"), iris_artifact.estimator.predict(sent))
    answer = result.get_response()
    assert [o.name for o in answer.outputs] == ["predict"], "only what was asked for"
    assert answer.id == "g-1"


def test_typed_contents_both_shapes(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, iris_artifact: IrisArtifact
) -> None:
    sample = iris_artifact.features.iloc[[2, 60, 120]]
    columns = service_pb2.ModelInferRequest(model_name="iris", id="typed")
    for name in IRIS_FEATURES:
        tensor = columns.inputs.add(name=name, datatype="FP64", shape=[3])
        tensor.contents.fp64_contents.extend(sample[name].tolist())
    matrix = service_pb2.ModelInferRequest(model_name="iris", model_version="1")
    tensor = matrix.inputs.add(name="x", datatype="FP64", shape=[3, 4])
    tensor.contents.fp64_contents.extend(sample.to_numpy().ravel().tolist())
    matrix.outputs.add(name="predict_proba")
    by_columns = stub.ModelInfer(columns)
    assert by_columns.id == "typed"
    assert not by_columns.raw_output_contents, "typed in, typed out"
    predict, proba = by_columns.outputs
    assert (predict.name, predict.datatype, list(predict.shape)) == ("predict", "INT64", [3])
    assert list(predict.contents.int64_contents) == iris_artifact.estimator.predict(sample).tolist()
    expected = iris_artifact.estimator.predict_proba(sample)
    assert (proba.datatype, list(proba.shape)) == ("FP64", [3, 3])
    np.testing.assert_allclose(np.reshape(proba.contents.fp64_contents, (3, 3)), expected)
    by_matrix = stub.ModelInfer(matrix)
    assert [o.name for o in by_matrix.outputs] == ["predict_proba"]
    assert len(by_matrix.id) == 32, "no id sent: the server's own"
    np.testing.assert_allclose(
        np.reshape(by_matrix.outputs[0].contents.fp64_contents, (3, 3)), expected
    )


def test_errors_are_status_codes_naming_what_is_wrong(
    client: triton.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    iris_artifact: IrisArtifact,
) -> None:
    sample = iris_artifact.features.iloc[[0, 1]]
    status, message = _refusal(lambda: client.infer("penguins", _column_inputs(sample)))
    assert status == "StatusCode.NOT_FOUND" and "'penguins' is not served here" in message
    status, message = _refusal(
        lambda: client.infer("iris", _column_inputs(sample), model_version="7")
    )
    assert status == "StatusCode.NOT_FOUND" and "no version '7'" in message, message
    status, message = _refusal(lambda: client.get_model_metadata("iris", "7"))
    assert status == "StatusCode.NOT_FOUND", message

    wrong = _column_inputs(sample)
    wrong[1] = triton.InferInput("sepal_width", [2], "BYTES")
    wrong[1].set_data_from_numpy(np.array([b"3.5", b"3.0"], dtype=object))
    status, message = _refusal(lambda: client.infer("iris", wrong))
    assert status == "StatusCode.INVALID_ARGUMENT", message
    assert "input 'sepal_width' has datatype BYTES" in message, message

    status, message = _refusal(lambda: client.infer("iris", _column_inputs(sample)[:3]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "input 'petal_width' is missing" in message

    narrow = triton.InferInput("input-0", [2, 3], "FP64")
    narrow.set_data_from_numpy(sample.to_numpy()[:, :3])
    status, message = _refusal(lambda: client.infer("iris", [narrow]))
    assert status == "StatusCode.INVALID_ARGUMENT", message
    assert "input 'input-0' has shape [2, 3]" in message, message

    status, message = _refusal(
        lambda: client.infer(
            "iris", _column_inputs(sample), outputs=[triton.InferRequestedOutput("decision")]
        )
    )
    assert status == "StatusCode.INVALID_ARGUMENT" and "output 'decision'" in message, message

    not_finite = triton.InferInput("x", [1, 4], "FP64")
    not_finite.set_data_from_numpy(np.array([[5.1, np.nan, 1.4, 0.2]]))
    status, message = _refusal(lambda: client.infer("iris", [not_finite]))
    assert status == "StatusCode.INVALID_ARGUMENT", message
    assert "input 'x' is FP64 but holds nan at index [0, 1]" in message, message

    short = service_pb2.ModelInferRequest(model_name="iris")
    short.inputs.add(name="x", datatype="FP64", shape=[1, 4])
    short.raw_input_contents.append(np.zeros(3).tobytes())
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(short)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw contents have 24 bytes, but 4 FP64 values take 32" in caught.value.details()


def _requests(server: GRPCServerProcess, code: str) -> float:
    text = httpx.get(f"{server.http.url}/metrics").text
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mlkube_requests_total" and sample.labels["code"] == code
    )


def test_a_grpc_prediction_is_counted_logged_and_takes_feedback(
    client: triton.InferenceServerClient, server: GRPCServerProcess, iris_artifact: IrisArtifact
) -> None:
    """Counted by the request counters canary analysis sums (an INVALID_ARGUMENT as a 4xx);
    its id from the x-request-id metadata when the request has none, and its rows take labels."""
    ok, bad = _requests(server, "2xx"), _requests(server, "4xx")
    result = client.infer(
        "iris", _column_inputs(iris_artifact.features.iloc[[0, 1]]), headers={"x-request-id": "h-7"}
    )
    assert result.get_response().id == "h-7"
    _refusal(lambda: client.infer("iris", _column_inputs(iris_artifact.features.iloc[[0]])[:1]))
    assert (_requests(server, "2xx"), _requests(server, "4xx")) == (ok + 1, bad + 1)
    labels = {"feedback": [{"requestId": "h-7-0", "label": 0}, {"requestId": "h-7-1", "label": 0}]}
    stored = httpx.post(f"{server.http.url}/feedback", json=labels)
    assert (stored.status_code, stored.json()) == (200, {"stored": 2})


def test_a_value_beyond_its_datatype_is_invalid_argument_counted_as_4xx(
    client: triton.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    server: GRPCServerProcess,
    iris_artifact: IrisArtifact,
) -> None:
    """Typed contents are wider than their datatype (int_contents carries any int32 for INT8),
    raw floats may be NaN or infinity: each is INVALID_ARGUMENT naming the input and the value,
    counted as a 4xx like REST's 400 (a 5xx would let a client fail a canary), with nothing in
    the server log."""
    sample = iris_artifact.features.iloc[[0, 1]]
    counted = {code: _requests(server, code) for code in ("2xx", "4xx", "5xx")}

    def typed(datatype: str, field: str, values: list[Any]) -> Any:
        request = service_pb2.ModelInferRequest(model_name="iris")
        for name in IRIS_FEATURES[:3]:
            request.inputs.add(name=name, datatype="FP64", shape=[2]).contents.fp64_contents.extend(
                sample[name].tolist()
            )
        width = request.inputs.add(name="petal_width", datatype=datatype, shape=[2])
        getattr(width.contents, field).extend(values)
        return lambda: stub.ModelInfer(request)

    def raw(values: np.ndarray[Any, Any]) -> Any:
        width = triton.InferInput("petal_width", [2], triton_dtype(values.dtype))
        width.set_data_from_numpy(values)
        return lambda: client.infer("iris", [*_column_inputs(sample)[:3], width])

    cases = [
        (typed("INT8", "int_contents", [1000, 2]), "is INT8 but holds 1000 at index 0"),
        (typed("UINT8", "uint_contents", [2, 256]), "is UINT8 but holds 256 at index 1"),
        (typed("INT16", "int_contents", [-40000, 2]), "is INT16 but holds -40000 at index 0"),
        (typed("FP32", "fp32_contents", [np.inf, 2]), "is FP32 but holds inf at index 0"),
        (raw(np.array([np.inf, 2], np.float16)), "is FP16 but holds inf at index 0"),
        (raw(np.array([1.0, np.nan], np.float64)), "is FP64 but holds nan at index 1"),
    ]
    for call, words in cases:
        with pytest.raises((grpc.RpcError, InferenceServerException)) as caught:
            call()
        refusal = caught.value
        if isinstance(refusal, grpc.RpcError):
            code, message = str(refusal.code()), str(refusal.details())
        else:
            code, message = str(refusal.status()), str(refusal.message())
        assert code == "StatusCode.INVALID_ARGUMENT", message
        assert message.startswith(f"input 'petal_width' {words}: "), message
    assert {code: _requests(server, code) for code in counted} == counted | {
        "4xx": counted["4xx"] + len(cases)
    }
    assert "Traceback" not in server.http.log_path.read_text()


def test_a_grpc_prediction_is_in_the_inference_log(
    iris_artifact: IrisArtifact, tmp_path: Path
) -> None:
    env = model_env(iris_artifact, **{ENV_INFERENCE_LOG_URI: str(tmp_path / "log")})
    sample = iris_artifact.features.iloc[[7, 8, 9]]
    with (
        GRPCServerProcess(env, tmp_path) as process,
        triton.InferenceServerClient(process.address) as client,
    ):
        client.infer("iris", _column_inputs(sample), request_id="logged")
    table = pq.read_table(next((tmp_path / "log" / "iris-v1").glob("*.parquet")))
    assert table.column(LOG_REQUEST_ID_COLUMN).to_pylist() == ["logged-0", "logged-1", "logged-2"]
    assert table.column("sepal_length").to_pylist() == sample["sepal_length"].tolist()


def test_the_row_cap_holds_for_grpc(iris_artifact: IrisArtifact, tmp_path: Path) -> None:
    env = model_env(iris_artifact, MLKUBE_MAX_ROWS="3")
    with (
        GRPCServerProcess(env, tmp_path) as process,
        triton.InferenceServerClient(process.address) as client,
    ):
        status, message = _refusal(
            lambda: client.infer("iris", _column_inputs(iris_artifact.features.iloc[:4]))
        )
        assert status == "StatusCode.INVALID_ARGUMENT" and "MLKUBE_MAX_ROWS" in message
        assert client.infer("iris", _column_inputs(iris_artifact.features.iloc[:3]))


@pytest.fixture(scope="module")
def fruit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GRPCServerProcess]:
    """A pipeline over string, int, bool and float columns with string class labels."""
    work = tmp_path_factory.mktemp("fruit")
    frame = pd.DataFrame(
        {
            "colour": ["red", "blue", "red", "green"] * 10,
            "count": list(range(40)),
            "fresh": [True, False] * 20,
            "weight": np.linspace(0.5, 4.0, 40),
        }
    )
    model = make_pipeline(
        ColumnTransformer(
            [("colour", OneHotEncoder(handle_unknown="ignore"), ["colour"])],
            remainder="passthrough",
        ),
        LogisticRegression(max_iter=1000),
    ).fit(frame, np.where(frame["count"] > 19, "large", "small"))
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
    with GRPCServerProcess(env, work) as process:
        yield process


def test_columns_of_every_type_raw_and_typed(fruit_server: GRPCServerProcess) -> None:
    columns = {
        "colour": ("BYTES", np.array([b"red", b"green"], dtype=object)),
        "count": ("INT32", np.array([3, 35], dtype=np.int32)),
        "fresh": ("BOOL", np.array([True, False])),
        "weight": ("FP32", np.array([0.7, 3.9], dtype=np.float32)),
    }
    with triton.InferenceServerClient(fruit_server.address) as client:
        inputs = []
        for name, (datatype, values) in columns.items():
            tensor = triton.InferInput(name, [2, 1], datatype)
            tensor.set_data_from_numpy(values.reshape(2, 1))
            inputs.append(tensor)
        result = client.infer("fruit", inputs, outputs=[triton.InferRequestedOutput("predict")])
        assert result.as_numpy("predict").tolist() == [b"small", b"large"]
        assert client.is_model_ready("fruit") and not client.is_model_ready("fruit", "1")

    typed = service_pb2.ModelInferRequest(model_name="fruit")
    typed.inputs.add(name="colour", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"red", b"green"]
    )
    typed.inputs.add(name="count", datatype="INT64", shape=[2]).contents.int64_contents.extend(
        [3, 35]
    )
    typed.inputs.add(name="fresh", datatype="BOOL", shape=[2]).contents.bool_contents.extend(
        [True, False]
    )
    typed.inputs.add(name="weight", datatype="FP64", shape=[2]).contents.fp64_contents.extend(
        [0.7, 3.9]
    )
    with grpc.insecure_channel(fruit_server.address) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed)
        assert list(answer.outputs[0].contents.bytes_contents) == [b"small", b"large"]
        count = typed.inputs[1]  # an int column refuses a float datatype, by name
        count.datatype = "FP64"
        count.contents.Clear()
        count.contents.fp64_contents.extend([3.0, 35.0])
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'count' has datatype FP64, but column 'count' is int" in caught.value.details()


def test_not_ready_and_busy_are_unavailable(
    iris_artifact: IrisArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: before the data plane starts, ready is false and a prediction UNAVAILABLE; a
    large request past the thread pool's places is UNAVAILABLE with when to retry (HTTP's
    ``retry-after`` and gRPC's own pushback), counted as a 5xx as REST's 503 is."""
    registry = CollectorRegistry()  # this process may hold another server's metrics already
    monkeypatch.setattr(dataplane, "ServingMetrics", partial(ServingMetrics, registry=registry))
    settings = ServeSettings.from_env(
        model_env(iris_artifact, MLKUBE_MAX_CONCURRENCY="1", MLKUBE_MAX_QUEUED="0")
    )
    plane = DataPlane(
        settings, iris_artifact.estimator, artifacts.load_schema(str(iris_artifact.directory))
    )
    port = free_port()
    server = GRPCServer(plane, V2Endpoints(plane, settings), port, host="127.0.0.1")
    big = service_pb2.ModelInferRequest(model_name="iris")  # 96 KB: read in the pool
    big.inputs.add(name="x", datatype="FP64", shape=[3000, 4])
    big.raw_input_contents.append(np.tile([5.1, 3.5, 1.4, 0.2], 3000).tobytes())

    async def scenario() -> None:
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                ready = await stub.ServerReady(service_pb2.ServerReadyRequest())
                assert not ready.ready
                with pytest.raises(grpc.aio.AioRpcError) as not_ready:
                    await stub.ModelInfer(big)
                assert not_ready.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "not ready" in str(not_ready.value.details())
                plane.start()
                assert (await stub.ServerReady(service_pb2.ServerReadyRequest())).ready
                admitted = plane.pool.admit()  # the pool's one place, taken
                try:
                    with pytest.raises(grpc.aio.AioRpcError) as busy:
                        await stub.ModelInfer(big)
                finally:
                    plane.pool.leave(admitted)
                assert busy.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "the server is busy" in str(busy.value.details())
                trailers = dict(busy.value.trailing_metadata() or ())
                assert trailers["retry-after"] == "1"
                assert trailers["grpc-retry-pushback-ms"] == "1000"
                answer = await stub.ModelInfer(big)
                assert list(answer.outputs[0].shape) == [3000]
        finally:
            await server.stop()
            plane.close()

    asyncio.run(scenario())
    plane.metrics.flush()
    counted = {
        code: registry.get_sample_value(
            "mlkube_requests_total", {"code": code, "model_version": "iris-v1"}
        )
        for code in ("2xx", "4xx", "5xx")
    }
    assert counted == {"2xx": 1.0, "4xx": 0.0, "5xx": 2.0}


def test_the_grpc_port_is_off_unless_set() -> None:
    """Without MLKUBE_GRPC_PORT nothing listens for gRPC; the operator sets it on every pod."""
    assert ServeSettings.from_env({"MLKUBE_MODEL_URI": "/m"}).grpc_port is None
    with_port = ServeSettings.from_env({"MLKUBE_MODEL_URI": "/m", ENV_GRPC_PORT: "8081"})
    assert with_port.grpc_port == 8081
