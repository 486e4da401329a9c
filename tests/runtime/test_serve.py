"""The model server as a pod runs it: a real iris model, a real BentoML server process, real HTTP."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge, SGDClassifier

from mlkube.api.modelversion import Column, ColumnType
from mlkube.layout import MODEL_FILE
from mlkube.runtime import artifacts
from mlkube.runtime.inference_log import PREDICTION_COLUMN
from mlkube.runtime.metrics import PREDICTION_VALUE_BUCKETS, ServingMetrics
from mlkube.runtime.protocol.dataplane import Predictor
from mlkube.runtime.protocol.errors import RequestError
from mlkube.runtime.protocol.rest.v1_endpoints import V1Endpoint, parse_request
from mlkube.runtime.protocol.settings import ENV_FAULT_ERROR_PERCENT, ENV_INFERENCE_LOG_URI
from mlkube.runtime.serving_cli import SpecError, spec_settings
from tests.runtime.servers import (
    IRIS_FEATURES,
    SERVE_COMMAND,
    STARTUP_SECONDS,
    IrisArtifact,
    ServerProcess,
    model_env,
    rows,
    save_iris_artifact,
    start_server,
)

pytestmark = pytest.mark.runtime

FEATURES = IRIS_FEATURES


@pytest.fixture(scope="module")
def iris_artifact(tmp_path_factory: pytest.TempPathFactory) -> IrisArtifact:
    return save_iris_artifact(tmp_path_factory.mktemp("iris-v1"))


@pytest.fixture(scope="module")
def inference_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inference-log")


@pytest.fixture(scope="module")
def server(
    iris_artifact: IrisArtifact, inference_log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = model_env(iris_artifact, **{ENV_INFERENCE_LOG_URI: str(inference_log_dir)})
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    process = start_server(SERVE_COMMAND, env, log_path)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_predictions_match_the_estimator(
    server: ServerProcess, iris_artifact: IrisArtifact
) -> None:
    sample = iris_artifact.features.iloc[[0, 1, 50, 75, 100, 149]]
    response = httpx.post(f"{server.url}/predict", json={"instances": rows(sample)})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["predictions"] == iris_artifact.estimator.predict(sample).tolist()
    np.testing.assert_allclose(
        answer["probabilities"], iris_artifact.estimator.predict_proba(sample), rtol=1e-9
    )
    assert answer["modelVersion"] == "iris-v1"


def test_columnar_inputs(server: ServerProcess, iris_artifact: IrisArtifact) -> None:
    sample = iris_artifact.features.iloc[[10, 60, 110]]
    inputs = {name: sample[name].tolist() for name in FEATURES}
    response = httpx.post(f"{server.url}/predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == iris_artifact.estimator.predict(sample).tolist()


def _valid_row() -> dict[str, Any]:
    return {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_kserve_v1_rows_as_lists_in_schema_order(
    server: ServerProcess, iris_artifact: IrisArtifact
) -> None:
    """Issue 17 item 4: a KServe v1 client's body, on /predict and on KServe's own path."""
    sample = iris_artifact.features.iloc[[0, 60, 120]]
    expected = iris_artifact.estimator.predict(sample).tolist()
    lists = {"instances": sample[FEATURES].to_numpy().tolist()}
    for path in ("/predict", "/v1/models/iris:predict"):
        answer = httpx.post(f"{server.url}{path}", json=lists)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == expected
        assert len(answer.json()["requestIds"]) == 3
    assert httpx.get(f"{server.url}/v1/models/iris").json() == {"name": "iris", "ready": True}
    unknown = httpx.post(f"{server.url}/v1/models/penguins:predict", json=lists)
    assert unknown.status_code == 404 and "'penguins' is not served here" in unknown.text
    assert httpx.get(f"{server.url}/v1/models/penguins").status_code == 404


@pytest.mark.parametrize(
    ("instances", "status", "words"),
    [
        ([[5.1, 3.5, 1.4]], 422, "instances[0] has 3 values; the model takes 4, in this order: "
         "sepal_length, sepal_width, petal_length, petal_width"),
        ([[5.1, 3.5, 1.4, 0.2], _valid_row()], 400, "instances[1] is an object where "
         "instances[0] is a list"),
        ([[5.1, "3.5", 1.4, 0.2]], 422, "column 'sepal_width' must be float, got string '3.5' "
         "in row 0"),
        ([7], 400, "instances[0] must be an object of column values or a list of them"),
    ],
)  # fmt: skip
def test_rows_as_lists_are_checked_like_objects(
    server: ServerProcess, instances: list[Any], status: int, words: str
) -> None:
    answer = httpx.post(f"{server.url}/predict", json={"instances": instances})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"], answer.text


@pytest.mark.parametrize(
    ("body", "column"),
    [
        (
            {"instances": [{k: v for k, v in _valid_row().items() if k != "petal_width"}]},
            "petal_width",
        ),
        ({"instances": [_valid_row() | {"sepal_length": "5.1"}]}, "sepal_length"),
        ({"instances": [_valid_row() | {"sepal_width": None}]}, "sepal_width"),
        ({"instances": [_valid_row() | {"colour": "blue"}]}, "colour"),
        (
            {"inputs": {k: [v] for k, v in _valid_row().items() if k != "sepal_width"}},
            "sepal_width",
        ),
        (
            {"inputs": {k: [v] for k, v in _valid_row().items()} | {"petal_length": [True]}},
            "petal_length",
        ),
        (
            {"inputs": {k: [v, v] for k, v in _valid_row().items()} | {"petal_width": [0.2]}},
            "petal_width",
        ),
    ],
    ids=[
        "missing",
        "string-in-float",
        "null",
        "unknown",
        "columnar-missing",
        "bool-in-float",
        "columnar-ragged",
    ],
)
def test_schema_violations_are_4xx_naming_the_column(
    server: ServerProcess, body: dict[str, Any], column: str
) -> None:
    response = httpx.post(f"{server.url}/predict", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["column"] == column
    assert repr(column) in response.json()["error"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2]",
        b'{"instances": []}',
        b'{"instances": [{"sepal_length": 1e999}]}',
        b'{"instances": [{"sepal_length": 1' + b"0" * 400 + b"}]}",
        b'{"instances": [{"sepal_length": NaN}]}',
    ],
)
def test_malformed_bodies_are_400(server: ServerProcess, content: bytes) -> None:
    response = httpx.post(f"{server.url}/predict", content=content)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"1" + b"0" * 400])
def test_a_number_beyond_float_range_is_called_that_not_invalid_json(
    server: ServerProcess, number: bytes
) -> None:
    content = b'{"instances": [{"sepal_length": ' + number + b"}]}"
    response = httpx.post(f"{server.url}/predict", content=content)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "beyond a 64-bit float's range" in error and "line 1 column" in error, error
    assert "not valid JSON" not in error


def test_probes_and_metrics(server: ServerProcess, iris_artifact: IrisArtifact) -> None:
    assert httpx.get(f"{server.url}/livez").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    httpx.post(f"{server.url}/predict", json={"instances": rows(iris_artifact.features.iloc[:3])})
    httpx.post(f"{server.url}/predict", json={"instances": [{"bad": 1}]})
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'mlkube_requests_total{code="2xx",model_version="iris-v1"}' in metrics
    assert 'mlkube_requests_total{code="4xx",model_version="iris-v1"}' in metrics
    assert 'mlkube_request_duration_seconds_bucket{le="0.005",model_version="iris-v1"}' in metrics
    assert 'mlkube_predictions_total{label="0",model_version="iris-v1"}' in metrics


def _requests_4xx(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mlkube_requests_total" and sample.labels.get("code") == "4xx"
    )


def test_a_get_on_predict_is_a_405_counted_as_4xx(server: ServerProcess) -> None:
    before = _requests_4xx(server)
    answer = httpx.get(f"{server.url}/predict")
    assert (answer.status_code, answer.json()) == (405, {"error": "use POST"})
    assert _requests_4xx(server) == before + 1


def test_inference_log_holds_inputs_and_predictions(
    server: ServerProcess, iris_artifact: IrisArtifact, inference_log_dir: Path
) -> None:
    """Runs last in the module: stopping the server must flush the buffered rows."""
    sample = iris_artifact.features.iloc[[5, 55, 105]]
    response = httpx.post(f"{server.url}/predict", json={"instances": rows(sample)})
    assert response.status_code == 200
    # uvicorn shuts down cleanly, then re-raises the SIGTERM it caught
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    segments = sorted((inference_log_dir / "iris-v1").glob("*.parquet"))  # the model version's
    assert segments, f"no segments in {inference_log_dir}:\n{server.output()}"
    assert all("-test-pod-" in s.name for s in segments)
    logged = pd.concat([pq.read_table(s).to_pandas() for s in segments])
    assert set(FEATURES) <= set(logged.columns)
    assert PREDICTION_COLUMN in logged.columns
    tail = logged.tail(3)
    np.testing.assert_allclose(tail[FEATURES].to_numpy(), sample.to_numpy())
    assert tail[PREDICTION_COLUMN].tolist() == iris_artifact.estimator.predict(sample).tolist()


def test_tampered_model_refuses_to_start(iris_artifact: IrisArtifact, tmp_path: Path) -> None:
    tampered = tmp_path / "iris-tampered"
    tampered.mkdir()
    for item in iris_artifact.directory.iterdir():
        (tampered / item.name).write_bytes(item.read_bytes())
    model = tampered / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[-2] ^= 0xFF  # after the digest was recorded
    model.write_bytes(bytes(data))
    env = model_env(iris_artifact) | {"MLKUBE_MODEL_URI": str(tampered)}
    server = start_server(SERVE_COMMAND, env, tmp_path / "server.log")
    try:
        returncode = server.process.wait(timeout=STARTUP_SECONDS)
    finally:
        server.stop()
    output = server.output()
    assert returncode != 0, output
    assert "sha256" in output
    assert iris_artifact.sha256 in output
    assert str(model) in output


def test_fault_knob_answers_500_at_about_the_configured_rate(
    iris_artifact: IrisArtifact, tmp_path: Path
) -> None:
    env = model_env(iris_artifact, **{ENV_FAULT_ERROR_PERCENT: "30"})
    server = start_server(SERVE_COMMAND, env, tmp_path / "server.log")
    try:
        server.wait_ready()
        body = {"instances": rows(iris_artifact.features.iloc[:1])}
        with httpx.Client(base_url=server.url) as client:
            codes = [client.post("/predict", json=body).status_code for _ in range(300)]
            metrics = client.get("/metrics").text
    finally:
        server.stop()
    assert set(codes) == {200, 500}
    errors = codes.count(500)
    assert 45 <= errors <= 135, errors  # binomial(300, 0.3): mean 90, sd 8
    assert f'mlkube_requests_total{{code="5xx",model_version="iris-v1"}} {errors}.0' in metrics


def test_stock_bentoml_serve_runs_the_service(iris_artifact: IrisArtifact, tmp_path: Path) -> None:
    """`bentoml serve mlkube.runtime.serve:MLKubeModelServer` (circus-supervised) works too."""
    command = [sys.executable, "-m", "bentoml", "serve", "mlkube.runtime.serve:MLKubeModelServer"]
    env = model_env(iris_artifact) | {"BENTOML_DO_NOT_TRACK": "true"}
    server = start_server(command, env, tmp_path / "server.log")
    try:
        server.wait_ready()
        sample = iris_artifact.features.iloc[[0, 100]]
        response = httpx.post(f"{server.url}/predict", json={"instances": rows(sample)})
        feedback = httpx.post(f"{server.url}/feedback", json={"feedback": []})
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    assert response.json()["predictions"] == iris_artifact.estimator.predict(sample).tolist()
    assert feedback.status_code == 404, feedback.text  # no inference log: nowhere to keep labels
    assert "MLKUBE_INFERENCE_LOG_URI" in feedback.json()["error"]
    assert 'mlkube_requests_total{code="2xx",model_version="iris-v1"} 1.0' in metrics


def test_spec_file_gives_env_defaults_and_port() -> None:
    env, port = spec_settings(
        {
            "spec": {
                "port": 8080,
                "MLKUBE_MODEL_VERSION": "v3",
                "env": [{"name": "MLKUBE_MODEL_URI", "value": "s3://models/ns/iris/3"}],
            }
        }
    )
    assert env == {"MLKUBE_MODEL_VERSION": "v3", "MLKUBE_MODEL_URI": "s3://models/ns/iris/3"}
    assert port == 8080
    with pytest.raises(SpecError):
        spec_settings(["not", "a", "mapping"])


def test_regressor_answers_values_and_fills_the_value_histogram() -> None:
    """In-process: the regressor path has no probabilities and a prediction histogram."""
    data = load_diabetes(as_frame=True)
    estimator = Ridge().fit(data.data, data.target)
    schema = artifacts.ModelSchema(
        task="regression",
        target="progression",
        columns=[Column(name=str(name), type="float") for name in data.data.columns],
    )
    predictor = Predictor(estimator, schema)
    sample = data.data.iloc[:5]
    body = json.dumps({"instances": sample.to_dict(orient="records")}).encode()
    prediction = predictor.predict(V1Endpoint(predictor, "test").read(body).features)
    assert prediction.probabilities is None
    np.testing.assert_allclose(prediction.values, estimator.predict(sample))
    registry = CollectorRegistry()
    metrics = ServingMetrics("r1", registry=registry)
    metrics.observe_values(prediction.values)
    metrics.flush()
    exposition = generate_latest(registry).decode()
    assert 'mlkube_prediction_value_count{model_version="r1"} 5.0' in exposition
    # the batched update matches Histogram.observe value by value
    reference = Histogram(
        "mlkube_prediction_value",
        "",
        buckets=PREDICTION_VALUE_BUCKETS,
        registry=CollectorRegistry(),
    )
    for value in prediction.values.tolist():
        reference.observe(value)
    expected = {
        sample.labels["le"]: sample.value
        for sample in next(iter(reference.collect())).samples
        if "le" in sample.labels
    }
    actual = {
        sample.labels["le"]: sample.value
        for metric in registry.collect()
        if metric.name == "mlkube_prediction_value"
        for sample in metric.samples
        if "le" in sample.labels
    }
    assert actual == expected


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ({"sepal_length": True}, "sepal_length"),
        ({"petal_length": "1.4"}, "petal_length"),
        ({"petal_width": None}, "petal_width"),
        ({"extra": 1.0}, "extra"),
    ],
)
def test_the_float_matrix_shortcut_refuses_what_the_checks_refuse(
    iris_artifact: IrisArtifact, row: dict[str, Any], column: str
) -> None:
    """All-float schemas skip the value-by-value checks, never their verdicts."""
    schema = artifacts.load_schema(str(iris_artifact.directory))
    predictor = Predictor(iris_artifact.estimator, schema)
    assert predictor.float_matrix
    good = rows(iris_artifact.features.iloc[:3])
    inputs = V1Endpoint(predictor, "test").read(json.dumps({"instances": good}).encode())
    np.testing.assert_array_equal(inputs.features, iris_artifact.features.iloc[:3].to_numpy())
    columnar = {k: [r[k] for r in good] for k in FEATURES}
    by_column = V1Endpoint(predictor, "test").read(json.dumps({"inputs": columnar}).encode())
    np.testing.assert_array_equal(by_column.features, inputs.features)
    ((names, logged),) = inputs.arrays.items()  # the log takes the matrix in one copy
    assert logged[:, list(names).index("petal_width")].tolist() == columnar["petal_width"]
    with pytest.raises(RequestError) as caught:
        V1Endpoint(predictor, "test").read(
            json.dumps({"instances": [*good, good[0] | row]}).encode()
        )
    assert caught.value.column == column


@pytest.mark.parametrize(
    ("values", "status"),
    [([True, 1.0], 422), (["1.4", 1.0], 422), ([None, 1.0], 422), ([1.0], 422), ([], 400)],
)
def test_the_columnar_float_matrix_shortcut_refuses_what_the_checks_refuse(
    iris_artifact: IrisArtifact, values: list[Any], status: int
) -> None:
    """A bool, a string, a null, a short or an empty column: the shortcut steps aside and the
    value-by-value checks name petal_length."""
    predictor = Predictor(
        iris_artifact.estimator, artifacts.load_schema(str(iris_artifact.directory))
    )
    inputs = {name: [1.0, 2.0] for name in FEATURES} | {"petal_length": values}
    with pytest.raises(RequestError) as caught:
        V1Endpoint(predictor, "test").read(json.dumps({"inputs": inputs}).encode())
    assert (caught.value.status, caught.value.column) == (status, "petal_length")


@pytest.mark.parametrize(
    ("odd_rows", "status", "column"),
    [
        ([[5.1, 3.5, 1.4, 0.2]], 400, None),
        (["abcd"], 400, None),
        (
            [
                _valid_row() | {"extra": 1.0},
                {k: v for k, v in _valid_row().items() if k != "petal_width"},
            ],
            422,
            "extra",
        ),
    ],
    ids=["a-list", "a-string", "one-extra-one-missing"],
)
def test_the_float_matrix_shortcut_hands_odd_rows_to_the_checks(
    iris_artifact: IrisArtifact, odd_rows: list[Any], status: int, column: str | None
) -> None:
    """Rows that are not objects, or whose column counts add up while one lacks a column, are
    answered by the value-by-value checks, never turned into a matrix."""
    predictor = Predictor(
        iris_artifact.estimator, artifacts.load_schema(str(iris_artifact.directory))
    )
    body = {"instances": [*rows(iris_artifact.features.iloc[:2]), *odd_rows]}
    with pytest.raises(RequestError) as caught:
        V1Endpoint(predictor, "test").read(json.dumps(body).encode())
    assert (caught.value.status, caught.value.column) == (status, column)


INT_AND_TEXT: dict[str, ColumnType] = {"count": "int", "note": "string"}


@pytest.mark.parametrize(
    ("count", "why"),
    [
        (b"-9223372036854775809", "not exact from 2**53 on"),  # arrives as a float
        (b"18446744073709551615", "beyond a 64-bit integer"),
        (b"9223372036854775808", "beyond a 64-bit integer"),
        (b"1e20", "not exact from 2**53 on"),
        (b"9007199254740993.0", "not exact from 2**53 on"),  # arrives as 2**53
        (b"9007199254740992.0", "not exact from 2**53 on"),
        (b"3.5", "got number 3.5 in row 0"),
    ],
)
def test_an_int_column_refuses_what_int64_cannot_hold_exactly(count: bytes, why: str) -> None:
    """Never a silent change (-2**63-1 used to become -2**63) nor Python's own words."""
    body = b'{"instances": [{"count": ' + count + b', "note": "a"}]}'
    with pytest.raises(RequestError) as caught:
        parse_request(body, INT_AND_TEXT)
    assert (caught.value.status, caught.value.column) == (422, "count")
    assert why in caught.value.message and "C long" not in caught.value.message


@pytest.mark.parametrize(
    "count",
    [
        b"-9223372036854775808",
        b"9223372036854775807",
        b"3.0",
        b"9007199254740991.0",
        b"9007199254740993",
    ],
)
def test_an_int_column_takes_every_int64_and_integral_numbers(count: bytes) -> None:
    body = b'{"instances": [{"count": ' + count + b', "note": "a"}]}'
    assert parse_request(body, INT_AND_TEXT)["count"] == [json.loads(count)]


@pytest.mark.parametrize(
    "value",
    [b"[" * 1000 + b"]" * 1000, b'"' + b"x" * 1_000_000 + b'"', b"[" + b"1," * 100_000 + b"1]"],
    ids=["nested-1000-deep", "a-megabyte-string", "an-array-of-100001"],
)
def test_an_error_never_echoes_a_huge_value_nor_fails_writing_it(value: bytes) -> None:
    """A repr of 1,000 nested arrays overflowed the stack: a 500 instead of a 422."""
    body = b'{"instances": [{"count": ' + value + b', "note": "a"}]}'
    with pytest.raises(RequestError) as caught:
        parse_request(body, INT_AND_TEXT)
    assert (caught.value.status, caught.value.column) == (422, "count")
    assert len(caught.value.message) < 200, caught.value.message[:300]


def test_ragged_columns_name_the_odd_column_out() -> None:
    body = {"inputs": {"count": [1], "note": ["a", "b"], "more": ["c", "d"]}}
    types: dict[str, ColumnType] = {**INT_AND_TEXT, "more": "string"}
    with pytest.raises(RequestError) as caught:
        parse_request(json.dumps(body).encode(), types)
    assert caught.value.column == "count"
    assert "has 1 value where the other columns have 2 values" in caught.value.message


def test_an_unknown_column_with_a_huge_name_is_named_in_short() -> None:
    body = {"instances": [{"count": 1, "note": "a", "x" * 100_000: 1}]}
    with pytest.raises(RequestError) as caught:
        parse_request(json.dumps(body).encode(), INT_AND_TEXT)
    assert caught.value.column is not None and len(caught.value.column) <= 60
    assert len(caught.value.message) < 200


@pytest.mark.parametrize("note", ["a", "ünïcødé€€€€"])  # orjson counts characters, not bytes
@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"nan"])
def test_nan_and_infinity_are_called_that_not_invalid_json(number: bytes, note: str) -> None:
    body = b'{"instances": [{"note": "' + note.encode() + b'", "count": ' + number + b"}]}"
    with pytest.raises(RequestError) as caught:
        parse_request(body, INT_AND_TEXT)
    assert caught.value.status == 400
    assert caught.value.message.startswith("request body has NaN or Infinity at line 1 column")


def test_labels_come_from_predict_where_probabilities_tie() -> None:
    """SGDClassifier's modified_huber probabilities are clipped: classes tie where the decision
    does not, and the argmax of the tie is not the model's answer."""
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    target = rng.integers(0, 3, 300)
    estimator = SGDClassifier(loss="modified_huber", random_state=0).fit(features, target)
    schema = artifacts.ModelSchema(
        task="classification",
        target="y",
        columns=[Column(name=name, type="float") for name in features.columns],
    )
    predictor = Predictor(estimator, schema)
    probe = pd.DataFrame(rng.normal(scale=3, size=(2000, 3)), columns=["a", "b", "c"])
    body = json.dumps({"instances": probe.to_dict(orient="records")}).encode()
    answer = predictor.predict(V1Endpoint(predictor, "test").read(body).features)
    assert answer.probabilities is not None
    assert (answer.probabilities.max(axis=1) == np.sort(answer.probabilities)[:, -2]).any()
    np.testing.assert_array_equal(answer.values, estimator.predict(probe))


def test_rows_as_lists_follow_the_schema_order_not_the_fitted_one(
    iris_artifact: IrisArtifact,
) -> None:
    """In-process: a schema listing the columns in another order than the model was fitted on;
    lists follow the schema, as its metadata shows them."""
    schema = artifacts.ModelSchema(
        task="classification",
        target="species",
        columns=[Column(name=name, type="float") for name in reversed(FEATURES)],
    )
    reader = V1Endpoint(Predictor(iris_artifact.estimator, schema), "test")
    sample = iris_artifact.features.iloc[[0, 60, 120]]
    as_lists = {"instances": sample[list(reversed(FEATURES))].to_numpy().tolist()}
    inputs = reader.read(json.dumps(as_lists).encode())
    np.testing.assert_array_equal(inputs.features, sample[FEATURES].to_numpy())
    as_objects = reader.read(json.dumps({"instances": rows(sample)}).encode())
    np.testing.assert_array_equal(inputs.features, as_objects.features)
    with_null = {"instances": [[0.2, 1.4, None, 5.1]]}
    with pytest.raises(RequestError, match="column 'sepal_width' must be float, got null"):
        reader.read(json.dumps(with_null).encode())
