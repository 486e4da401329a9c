"""Ground truth, the model server's side: every answered row has a request id, the inference log
keeps it with the model version and the probabilities, and ``POST /feedback`` stores labels."""

from __future__ import annotations

import json
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge

from mlkube.api.modelversion import Column
from mlkube.layout import (
    FEEDBACK_DIR,
    FEEDBACK_LABEL_COLUMN,
    FEEDBACK_REQUEST_ID_COLUMN,
    LOG_CLASSES_METADATA,
    LOG_MODEL_VERSION_COLUMN,
    LOG_PREDICTION_COLUMN,
    LOG_PROBABILITIES_COLUMN,
    LOG_REQUEST_ID_COLUMN,
    LOG_TS_COLUMN,
)
from mlkube.runtime import artifacts
from mlkube.runtime.protocol.errors import RequestError
from mlkube.runtime.protocol.feedback import FeedbackReader
from mlkube.runtime.protocol.http import MAX_BODY_BYTES
from mlkube.runtime.protocol.request_ids import request_id_of, uuid4_hex
from mlkube.runtime.protocol.rest.v1_endpoints import row_ids_json
from mlkube.runtime.protocol.settings import ENV_INFERENCE_LOG_URI
from tests.runtime.servers import (
    SERVE_COMMAND,
    IrisArtifact,
    ServerProcess,
    model_env,
    rows,
    save_iris_artifact,
    start_server,
)

pytestmark = pytest.mark.runtime

HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def iris_artifact(tmp_path_factory: pytest.TempPathFactory) -> IrisArtifact:
    return save_iris_artifact(tmp_path_factory.mktemp("iris-v1"))


def _serve(env: dict[str, str], directory: Path) -> ServerProcess:
    server = start_server(SERVE_COMMAND, env, directory / "server.log")
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def server(
    iris_artifact: IrisArtifact, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("server")
    env = model_env(iris_artifact, **{ENV_INFERENCE_LOG_URI: str(directory / "log")})
    process = _serve(env, directory)
    try:
        yield process
    finally:
        process.stop()


def _predict(server: ServerProcess, body: dict[str, Any], **headers: str) -> httpx.Response:
    response = httpx.post(f"{server.url}/predict", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def _feedback(server: ServerProcess, *items: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/feedback", json={"feedback": list(items)})


# Request ids on /predict


def test_without_an_id_the_server_makes_one_and_numbers_the_rows(
    server: ServerProcess, iris_artifact: IrisArtifact
) -> None:
    response = _predict(server, {"instances": rows(iris_artifact.features.iloc[:3])})
    request_id = response.headers["X-Request-ID"]
    assert HEX_ID.fullmatch(request_id) and uuid.UUID(request_id).version == 4
    assert response.json()["requestIds"] == [f"{request_id}-{row}" for row in range(3)]


def test_the_x_request_id_header_names_the_rows(
    server: ServerProcess, iris_artifact: IrisArtifact
) -> None:
    body = {"instances": rows(iris_artifact.features.iloc[:1])}
    response = _predict(server, body, **{"X-Request-ID": "order-17"})
    assert response.json()["requestIds"] == ["order-17-0"]  # a one-row request too
    assert response.headers["X-Request-ID"] == "order-17"


def test_the_bodys_id_names_the_rows_and_wins_over_the_header(
    server: ServerProcess, iris_artifact: IrisArtifact
) -> None:
    """A proxy may have added the header (ingress-nginx does); the body is the client's own."""
    sample = iris_artifact.features.iloc[:2]
    body = {"id": "basket-9", "inputs": {name: sample[name].tolist() for name in sample}}
    response = _predict(server, body, **{"X-Request-ID": "from-the-ingress"})
    assert response.json()["requestIds"] == ["basket-9-0", "basket-9-1"]
    assert response.headers["X-Request-ID"] == "basket-9"


@pytest.mark.parametrize(
    ("body_id", "header", "named"),
    [
        (17, None, '"id"'),
        ("", None, '"id"'),
        ("two words", None, '"id"'),
        ("x" * 129, None, '"id"'),
        (None, "two words", "X-Request-ID"),
        (None, "café", "X-Request-ID"),
    ],
    ids=["a-number", "empty", "a-space", "too-long", "header-space", "header-not-ascii"],
)
def test_a_bad_request_id_is_a_400_naming_it(
    server: ServerProcess,
    iris_artifact: IrisArtifact,
    body_id: Any,
    header: str | None,
    named: str,
) -> None:
    body: dict[str, Any] = {"instances": rows(iris_artifact.features.iloc[:1])}
    if body_id is not None:
        body["id"] = body_id
    headers = {} if header is None else {b"X-Request-ID": header.encode()}
    response = httpx.post(f"{server.url}/predict", json=body, headers=headers)
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]
    assert "128 visible ASCII characters" in response.json()["error"]


# POST /feedback


def test_feedback_is_stored_for_known_and_unknown_ids(
    server: ServerProcess, iris_artifact: IrisArtifact
) -> None:
    """Unknown ids are no error here: the join counts them, and labels may come first."""
    answer = _predict(server, {"instances": rows(iris_artifact.features.iloc[:2])}).json()
    response = _feedback(
        server,
        {"requestId": answer["requestIds"][0], "label": 2, "outcomes": {"revenue": 12.5}},
        {"requestId": answer["requestIds"][1], "label": 1.0},  # equals class 1
        {"requestId": "never-answered-0", "label": 0, "outcomes": {"churned.days": 3}},
    )
    assert (response.status_code, response.json()) == (200, {"stored": 3})


@pytest.mark.parametrize(
    ("item", "named_id", "says"),
    [
        ({"requestId": "a-0", "label": 7}, "a-0", "not one of the model's classes [0, 1, 2]"),
        ({"requestId": "a-0", "label": "setosa"}, "a-0", "not one of the model's classes"),
        ({"requestId": "a-0", "label": True}, "a-0", "not one of the model's classes"),
        ({"requestId": "a-0", "label": 1.5}, "a-0", "not one of the model's classes"),
        ({"requestId": "a-0"}, "a-0", "label is missing"),
        ({"label": 1}, None, "requestId must be a non-empty string"),
        ({"requestId": "", "label": 1}, None, "requestId must be a non-empty string"),
        ({"requestId": 12, "label": 1}, None, "requestId must be a non-empty string"),
        ({"requestId": "a-0", "label": 1, "lable": 1}, "a-0", "unknown field 'lable'"),
        ({"requestId": "a-0", "label": 1, "outcomes": {"1st": 1}}, "a-0", "outcome name '1st'"),
        ({"requestId": "a-0", "label": 1, "outcomes": {"label": 1}}, "a-0", "outcome name"),
        ({"requestId": "a-0", "label": 1, "outcomes": {"_mlkube_ts": 1}}, "a-0", "outcome name"),
        ({"requestId": "a-0", "label": 1, "outcomes": {"revenue": "12"}}, "a-0", "finite number"),
        ({"requestId": "a-0", "label": 1, "outcomes": [12]}, "a-0", "outcomes must be an object"),
        ({"requestId": "a-0", "label": 1, "outcomes": {"x" * 64: 1}}, "a-0", "at most 63"),
        (
            {"requestId": "a-0", "label": 1, "outcomes": {f"kpi{i}": 1 for i in range(17)}},
            "a-0",
            "the request names more than 16 outcomes",
        ),
    ],
    ids=[
        "unknown-class",
        "a-name-for-int-classes",
        "a-bool-for-int-classes",
        "a-fraction",
        "no-label",
        "no-request-id",
        "empty-request-id",
        "number-request-id",
        "unknown-field",
        "outcome-name-not-an-identifier",
        "outcome-named-label",
        "outcome-named-like-the-logs-own",
        "outcome-not-a-number",
        "outcomes-not-an-object",
        "an-outcome-name-a-monitor-cannot-read",
        "more-outcome-names-than-a-monitor-reads",  # each would be a column: bounded
    ],
)
def test_refused_feedback_is_a_422_naming_the_item_and_its_id(
    server: ServerProcess, item: dict[str, Any], named_id: str | None, says: str
) -> None:
    """The whole request is refused: nothing of it is stored."""
    response = _feedback(server, {"requestId": "fine-0", "label": 0}, item)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["index"] == 1 and error.get("requestId") == named_id
    assert error["error"].startswith("feedback[1]") and says in error["error"], error


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1]", b'{"feedback": {}}', b'{"feedback": []}', b'{"feedback": [1]}'],
)
def test_a_malformed_feedback_body_is_a_400(server: ServerProcess, content: bytes) -> None:
    response = httpx.post(f"{server.url}/feedback", content=content)
    assert response.status_code == 400, response.text


def test_an_oversized_feedback_body_is_a_413(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/feedback", content=b" " * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413, response.text


def test_a_get_on_feedback_is_a_405(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/feedback")
    assert (response.status_code, response.json()) == (405, {"error": "use POST"})


def _counts(server: ServerProcess) -> dict[tuple[str, str], float]:
    """The request and label counters, by series name and status class."""
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (sample.name, sample.labels.get("code", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("mlkube_request", "mlkube_feedback"))
        and sample.name.endswith(("_total", "_count"))
    }


def test_feedback_requests_have_series_of_their_own(server: ServerProcess) -> None:
    """Canary analysis reads mlkube_requests_total as the predictions' error rate: feedback
    never changes it."""
    before = _counts(server)
    _feedback(server, {"requestId": "a-0", "label": 0}, {"requestId": "b-0", "label": 1})
    _feedback(server, {"requestId": "a-0", "label": 9})
    after = _counts(server)
    changed = {key: value - before[key] for key, value in after.items() if value != before[key]}
    assert changed == {
        ("mlkube_feedback_requests_total", "2xx"): 1.0,
        ("mlkube_feedback_requests_total", "4xx"): 1.0,
        ("mlkube_feedback_request_duration_seconds_count", ""): 2.0,
        ("mlkube_feedback_labels_total", ""): 2.0,
    }


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = load_diabetes(as_frame=True)
    directory = tmp_path_factory.mktemp("diabetes")
    digest = artifacts.save_model(str(directory / "model"), Ridge().fit(data.data, data.target))
    schema = artifacts.ModelSchema(
        task="regression",
        target="progression",
        columns=[Column(name=str(name), type="float") for name in data.data.columns],
    )
    artifacts.write_json(
        artifacts.join(str(directory / "model"), artifacts.SCHEMA_FILE), schema.to_json()
    )
    env = {
        "MLKUBE_MODEL_URI": str(directory / "model"),
        "MLKUBE_MODEL_SHA256": digest,
        ENV_INFERENCE_LOG_URI: str(directory / "log"),
    }
    process = _serve(env, directory)
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("label", ["151.0", True, None, [151.0]])
def test_a_regressors_label_must_be_a_finite_number(regressor: ServerProcess, label: Any) -> None:
    response = _feedback(regressor, {"requestId": "r-0", "label": label})
    assert response.status_code == 422, response.text
    assert "label must be a finite number" in response.json()["error"]
    assert response.json()["requestId"] == "r-0"


def test_a_regressor_takes_any_finite_number_as_its_label(regressor: ServerProcess) -> None:
    response = _feedback(
        regressor, {"requestId": "r-0", "label": 151}, {"requestId": "r-1", "label": -2.5}
    )
    assert (response.status_code, response.json()) == (200, {"stored": 2})


# Nothing is lost on SIGTERM


@dataclass(frozen=True)
class Stopped:
    """What a server answered before a SIGTERM, and the directories its logs went to."""

    answers: list[dict[str, Any]]
    feedback: list[dict[str, Any]]
    log_dir: Path
    returncode: int
    output: str


@pytest.fixture(scope="module")
def stopped(iris_artifact: IrisArtifact, tmp_path_factory: pytest.TempPathFactory) -> Stopped:
    """A server that answered predictions and took feedback, then got a SIGTERM at once."""
    directory = tmp_path_factory.mktemp("sigterm")
    env = model_env(iris_artifact, **{ENV_INFERENCE_LOG_URI: str(directory / "log")})
    server = _serve(env, directory)
    try:
        features = iris_artifact.features
        answers = [
            _predict(server, {"instances": rows(features.iloc[[0, 50, 100]])}).json(),
            _predict(server, {"id": "basket-9", "instances": rows(features.iloc[[149]])}).json(),
            _predict(
                server, {"instances": rows(features.iloc[[25, 75]])}, **{"X-Request-ID": "o-17"}
            ).json(),
        ]
        feedback = [
            {"requestId": answers[0]["requestIds"][0], "label": 0, "outcomes": {"revenue": 12.5}},
            {"requestId": answers[1]["requestIds"][0], "label": 2},
            {"requestId": "o-17-1", "label": 1, "outcomes": {"revenue": 3, "returned": 1}},
        ]
        assert _feedback(server, *feedback).json() == {"stored": 3}
    finally:
        returncode = server.stop()  # SIGTERM right away: both logs are still only in memory
    return Stopped(answers, feedback, directory / "log", returncode, server.output())


def _read(directory: Path) -> pa.Table:
    segments = sorted(directory.glob("*.parquet"))
    assert segments, f"no segments in {directory}"
    return pa.concat_tables([pq.read_table(s) for s in segments], promote_options="permissive")


def test_a_sigterm_writes_every_answered_row_and_every_label(stopped: Stopped) -> None:
    assert stopped.returncode in (0, -signal.SIGTERM), stopped.output  # a graceful stop
    assert "Traceback" not in stopped.output, stopped.output
    logged = _read(stopped.log_dir / "iris-v1")  # one directory per model version
    assert logged.num_rows == 6
    assert _read(stopped.log_dir / FEEDBACK_DIR).num_rows == 3


def test_logged_rows_carry_their_request_id_model_version_and_probabilities(
    stopped: Stopped, iris_artifact: IrisArtifact
) -> None:
    logged = _read(stopped.log_dir / "iris-v1")
    answered = [row_id for answer in stopped.answers for row_id in answer["requestIds"]]
    assert logged.column(LOG_REQUEST_ID_COLUMN).to_pylist() == answered
    assert answered[3:] == ["basket-9-0", "o-17-0", "o-17-1"]
    assert set(logged.column(LOG_MODEL_VERSION_COLUMN).to_pylist()) == {"iris-v1"}
    probabilities = logged.column(LOG_PROBABILITIES_COLUMN)
    assert probabilities.type == pa.list_(pa.float64(), 3)  # fixed size: one per class
    np.testing.assert_allclose(
        probabilities.to_pylist(),
        [p for answer in stopped.answers for p in answer["probabilities"]],
        rtol=1e-12,
    )
    assert json.loads(logged.schema.metadata[LOG_CLASSES_METADATA]) == [0, 1, 2]
    assert logged.column(LOG_PREDICTION_COLUMN).to_pylist() == [
        p for answer in stopped.answers for p in answer["predictions"]
    ]
    assert logged.column(LOG_TS_COLUMN).type == pa.int64()


def test_feedback_segments_hold_the_labels_typed_as_the_predictions(stopped: Stopped) -> None:
    table = _read(stopped.log_dir / FEEDBACK_DIR)
    assert table.column_names[:2] == [FEEDBACK_REQUEST_ID_COLUMN, FEEDBACK_LABEL_COLUMN]
    assert table.column(FEEDBACK_REQUEST_ID_COLUMN).to_pylist() == [
        item["requestId"] for item in stopped.feedback
    ]
    assert table.schema.field(FEEDBACK_LABEL_COLUMN).type == pa.int64()  # as classes_
    assert table.column(FEEDBACK_LABEL_COLUMN).to_pylist() == [0, 2, 1]
    assert table.schema.field("revenue").type == pa.float64()
    assert table.column("revenue").to_pylist() == [12.5, None, 3.0]  # null where not given
    assert table.column("returned").to_pylist() == [None, None, 1.0]
    assert table.column(LOG_TS_COLUMN).type == pa.int64()


# The pure helpers


def test_the_bodys_id_then_the_header_then_a_new_uuid4() -> None:
    headers = [(b"host", b"x"), (b"x-request-id", b"from-header")]
    assert request_id_of("from-body", headers) == "from-body"
    assert request_id_of(None, headers) == "from-header"
    assert HEX_ID.fullmatch(request_id_of(None, [(b"host", b"x")]))
    with pytest.raises(RequestError) as caught:
        request_id_of(None, [(b"x-request-id", b"a\tb")])
    assert caught.value.status == 400 and "X-Request-ID" in caught.value.message


def test_generated_ids_are_version_4_uuids() -> None:
    ids = [uuid4_hex() for _ in range(1000)]
    assert len(set(ids)) == 1000
    parsed = [uuid.UUID(i) for i in ids]
    assert {(u.version, u.variant) for u in parsed} == {(4, uuid.RFC_4122)}
    assert all(u.hex == i for u, i in zip(parsed, ids, strict=True))


@pytest.mark.parametrize("request_id", ["abc", 'say "hi"', "back\\slash", "x" * 128])
@pytest.mark.parametrize("count", [1, 2, 1024, 1025])
def test_row_ids_are_the_id_a_dash_and_the_row(request_id: str, count: int) -> None:
    written = orjson.loads(orjson.dumps({"requestIds": row_ids_json(request_id, count)}))
    assert written["requestIds"] == [f"{request_id}-{row}" for row in range(count)]


def _body(*items: dict[str, Any]) -> bytes:
    return orjson.dumps({"feedback": list(items)})


@pytest.mark.parametrize(
    ("classes", "labels", "stored"),
    [
        (np.array([0, 1, 2]), [2, 1.0], np.array([2, 1])),
        (np.array(["cat", "dog"], dtype=object), ["dog", "cat"], np.array(["dog", "cat"])),
        (np.array([False, True]), [True, False], np.array([True, False])),
        (None, [151, -2.5], np.array([151.0, -2.5])),
    ],
    ids=["int-classes", "string-classes", "bool-classes", "regressor"],
)
def test_labels_are_stored_in_the_type_of_the_predictions(
    classes: Any, labels: list[Any], stored: Any
) -> None:
    columns = FeedbackReader(classes).read(
        _body(*({"requestId": f"r-{i}", "label": label} for i, label in enumerate(labels)))
    )
    label_column = np.asarray(columns[FEEDBACK_LABEL_COLUMN])
    np.testing.assert_array_equal(label_column, stored)
    assert stored.dtype.kind in (label_column.dtype.kind, "U")  # strings may be objects


def test_a_bool_class_is_never_taken_for_an_int_one() -> None:
    """In Python True == 1; in JSON they are different values."""
    with pytest.raises(RequestError):
        FeedbackReader(np.array([False, True])).read(_body({"requestId": "r-0", "label": 1}))
    with pytest.raises(RequestError):
        FeedbackReader(np.array([0, 1])).read(_body({"requestId": "r-0", "label": True}))


def test_outcomes_a_row_does_not_give_are_null() -> None:
    columns = FeedbackReader(None).read(
        _body(
            {"requestId": "r-0", "label": 1, "outcomes": {"revenue": 2}},
            {"requestId": "r-1", "label": 1, "outcomes": {"clicks": 3.5}},
        )
    )
    assert list(columns) == [FEEDBACK_REQUEST_ID_COLUMN, FEEDBACK_LABEL_COLUMN, "revenue", "clicks"]
    assert columns["revenue"] == [2.0, None] and columns["clicks"] == [None, 3.5]
