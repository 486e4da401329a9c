"""Any request, any load: a huge request, a slow body and a burst each get their status while the
probes keep answering (issue 17); and the pure pieces that decide it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.ensemble import RandomForestClassifier

from mlkube.api.modelversion import Column
from mlkube.runtime import artifacts
from mlkube.runtime.protocol.dataplane import Predictor
from mlkube.runtime.protocol.errors import Overloaded, RequestError
from mlkube.runtime.protocol.feedback import FeedbackReader
from mlkube.runtime.protocol.http import MAX_BODY_BYTES, BodyReader, ThreadPool
from mlkube.runtime.protocol.rest.v1_endpoints import V1Endpoint
from mlkube.runtime.protocol.settings import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_ROWS,
    DEFAULT_MIN_BODY_RATE,
    ENV_BODY_GRACE_SECONDS,
    ENV_MAX_CONCURRENCY,
    ENV_MAX_QUEUED,
    ENV_MAX_ROWS,
    ServeConfigError,
    ServeSettings,
)
from tests.runtime.servers import (
    IRIS_FEATURES,
    SERVE_COMMAND,
    IrisArtifact,
    ServerProcess,
    save_iris_artifact,
    start_server,
)

pytestmark = pytest.mark.runtime

PROBE_BUDGET_SECONDS = 0.1
BURST = 6
BURST_ROWS = 50_000

PROBER = """
import http.client, json, sys, time
port, stop_after = int(sys.argv[1]), float(sys.argv[2])
latencies, failures, stamps = [], [], []
deadline = time.monotonic() + stop_after
while time.monotonic() < deadline:
    started = time.monotonic()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/livez")
        status = connection.getresponse().status
        connection.close()
        if status != 200:
            failures.append(status)
    except OSError as e:
        failures.append(repr(e))
    latencies.append(time.monotonic() - started)
    stamps.append(started)
    time.sleep(0.02)
print(json.dumps({"latencies": latencies, "failures": failures, "stamps": stamps}))
"""
"""/livez every 20 ms from a process of its own, so the test's own threads (building and sending
megabytes of JSON) never delay the probe they time."""


@pytest.fixture(scope="module")
def forest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-tree forest on small synthetic data: 50,000 rows take about a second."""
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(400, 4)), columns=IRIS_FEATURES)
    target = (features["sepal_length"] + rng.normal(size=400) > 0).astype(int)
    estimator = RandomForestClassifier(n_estimators=300, random_state=0).fit(features, target)
    directory = tmp_path_factory.mktemp("forest")
    artifacts.save_model(str(directory), estimator)
    schema = artifacts.ModelSchema(
        task="classification",
        target="y",
        columns=[Column(name=name, type="float") for name in IRIS_FEATURES],
        classes=["0", "1"],
    )
    artifacts.write_json(artifacts.join(str(directory), artifacts.SCHEMA_FILE), schema.to_json())
    return directory


@pytest.fixture
def forest_server(forest: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {
        "MLKUBE_MODEL_URI": str(forest),
        "MLKUBE_MODEL_VERSION": "forest-v1",
        ENV_MAX_CONCURRENCY: "2",
        ENV_MAX_QUEUED: "1",
        ENV_BODY_GRACE_SECONDS: "1",
    }
    server = start_server(SERVE_COMMAND, env, tmp_path / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _columns(rows: int, decimals: int = 2) -> bytes:
    """`rows` random rows as columns, numbers rounded to `decimals`."""
    rng = np.random.default_rng(rows)
    values = np.round(rng.normal(size=(len(IRIS_FEATURES), rows)), decimals)
    document = {"inputs": dict(zip(IRIS_FEATURES, values.tolist(), strict=True))}
    return json.dumps(document, separators=(",", ":")).encode()


def _slow_drip(port: int) -> tuple[int, float]:
    """A body promised at 100,000 bytes that comes 10 bytes every 0.1 s; its status and when."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        connection.settimeout(0.1)
        answer = b""
        for _ in range(100):
            try:
                connection.sendall(b'{"inputs":')
                answer = connection.recv(4096)
                break
            except TimeoutError:
                continue
            except OSError:  # the server closed the connection after answering
                break
        connection.settimeout(5)
        while b"\r\n" not in answer:
            more = connection.recv(4096)
            if not more:
                raise AssertionError(f"the connection closed after {answer!r}")
            answer += more
    return int(answer.split(b" ")[1]), time.monotonic() - started


def _post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=60
    )


def _counts(metrics: str) -> dict[str, float]:
    return {
        sample.labels["code"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "mlkube_requests_total"
    }


def test_a_huge_request_a_slow_body_and_a_burst_get_their_status_while_livez_answers(
    forest_server: ServerProcess,
) -> None:
    """A 1M-row request (413: over the body limit), one row over the row cap (413), a
    slow-drip body (408) and a burst past the concurrency limit
    (200s and 503s with Retry-After) each get their status while ``/livez`` keeps answering
    within 100 ms."""
    million = _columns(1_000_000)  # 21 MB: over the body limit
    over_cap = _columns(DEFAULT_MAX_ROWS + 1, decimals=1)
    burst = _columns(BURST_ROWS)
    prober = subprocess.Popen(
        [sys.executable, "-c", PROBER, str(forest_server.port), "8"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # a few probes before the load
    with ThreadPoolExecutor(2 + BURST) as threads:
        drip = threads.submit(_slow_drip, forest_server.port)
        huge = _post(forest_server.url, million)
        too_many = _post(forest_server.url, over_cap)
        answers = list(threads.map(lambda _: _post(forest_server.url, burst), range(BURST)))
        drip_status, drip_seconds = drip.result()
    probes = json.loads(prober.communicate(timeout=30)[0])
    assert huge.status_code == 413, huge.text
    assert f"larger than {MAX_BODY_BYTES} bytes" in huge.json()["error"]
    assert too_many.status_code == 413, too_many.text
    assert f"has {DEFAULT_MAX_ROWS + 1} rows" in too_many.json()["error"]
    assert f"at most {DEFAULT_MAX_ROWS} a request ({ENV_MAX_ROWS})" in too_many.json()["error"]
    assert drip_status == 408, drip_seconds
    assert drip_seconds < 5
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 3 + [503] * 3, [a.text[:200] for a in answers]  # 2 run, 1 waits
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers["retry-after"]) >= 1
            assert ENV_MAX_CONCURRENCY in answer.json()["error"]
        else:
            assert len(answer.json()["predictions"]) == BURST_ROWS
    assert not probes["failures"], probes["failures"]
    assert len(probes["latencies"]) > 100
    first = probes["stamps"][0]
    slowest = sorted(
        (latency, stamp - first)
        for latency, stamp in zip(probes["latencies"], probes["stamps"], strict=True)
    )
    assert slowest[-1][0] < PROBE_BUDGET_SECONDS, f"(seconds, when): {slowest[-5:]}"
    counts = _counts(httpx.get(f"{forest_server.url}/metrics").text)
    assert counts == {"2xx": 3.0, "4xx": 3.0, "5xx": 3.0}, counts


def test_limits_from_the_environment() -> None:
    settings = ServeSettings.from_env({"MLKUBE_MODEL_URI": "/m"})
    assert (settings.max_rows, settings.max_concurrency, settings.max_queued) == (
        DEFAULT_MAX_ROWS,
        DEFAULT_MAX_CONCURRENCY,
        DEFAULT_MAX_QUEUED,
    )
    assert settings.min_body_rate == DEFAULT_MIN_BODY_RATE
    for name, value in [(ENV_MAX_ROWS, "0"), (ENV_MAX_CONCURRENCY, "1.5"), (ENV_MAX_QUEUED, "x")]:
        with pytest.raises(ServeConfigError, match=name):
            ServeSettings.from_env({"MLKUBE_MODEL_URI": "/m", name: value})


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> IrisArtifact:
    return save_iris_artifact(tmp_path_factory.mktemp("iris"))


def test_more_rows_than_the_cap_is_a_413_naming_it(iris: IrisArtifact) -> None:
    predictor = Predictor(iris.estimator, artifacts.load_schema(str(iris.directory)), max_rows=3)
    row = dict.fromkeys(IRIS_FEATURES, 1.0)
    assert (
        V1Endpoint(predictor, "test").read(json.dumps({"instances": [row] * 3}).encode()).rows == 3
    )
    for body in (
        {"instances": [row] * 4},
        {"inputs": {name: [1.0] * 4 for name in IRIS_FEATURES}},
        {"instances": [row, "not even a row", 1, 2]},
    ):
        with pytest.raises(RequestError) as caught:
            V1Endpoint(predictor, "test").read(json.dumps(body).encode())
        assert caught.value.status == 413
        assert "has 4 rows" in caught.value.message and "at most 3" in caught.value.message
    labels = {"feedback": [{"requestId": f"r-{i}", "label": 0} for i in range(3)]}
    with pytest.raises(RequestError) as caught:
        FeedbackReader(np.array([0, 1, 2]), max_rows=2).read(json.dumps(labels).encode())
    assert caught.value.status == 413 and "at most 2" in caught.value.message


class _SlowModel:
    """5 ms a call, whatever the rows: every prediction belongs off the event loop."""

    def predict(self, features: Any) -> np.ndarray[Any, Any]:
        time.sleep(0.005)
        return np.zeros(len(features))


def test_only_cheap_predictions_run_inline(iris: IrisArtifact) -> None:
    fast = Predictor(iris.estimator, artifacts.load_schema(str(iris.directory)))
    fast.warm_up()
    assert fast.inline_rows >= 100  # a LogisticRegression: well under 2 ms at 100 rows
    schema = artifacts.ModelSchema(
        task="regression", target="y", columns=[Column(name="x", type="float")]
    )
    slow = Predictor(_SlowModel(), schema)
    slow.warm_up()
    assert slow.inline_rows == 0


def test_the_pool_admits_workers_plus_queued_then_refuses_with_a_retry_after() -> None:
    pool = ThreadPool(workers=1, queued=1)
    try:
        first, second = pool.admit(), pool.admit()
        with pytest.raises(Overloaded) as caught:
            pool.admit()
        assert caught.value.retry_after >= 1
        assert f"{ENV_MAX_CONCURRENCY}=1" in caught.value.message
        pool.leave(first)
        pool.leave(pool.admit())
        pool.leave(second)
        assert asyncio.run(pool.run(sum, [1, 2])) == 3
    finally:
        pool.shutdown()


def _receiver(chunks: list[bytes], then_wait: bool) -> Any:
    """An ASGI receive giving `chunks` (more_body until the last unless `then_wait`), then
    waiting for ever when `then_wait`."""
    pending = list(chunks)

    async def receive() -> MutableMapping[str, Any]:
        if not pending:
            await asyncio.Event().wait()
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": then_wait or bool(pending)}

    return receive


def test_a_body_behind_the_floor_rate_is_a_408_and_one_on_time_is_read() -> None:
    async def scenario() -> tuple[bytes, RequestError]:
        reader = BodyReader(rate=1000, grace=0.2)
        body = await reader.read(_receiver([b"ab", b"cd"], then_wait=False), time.perf_counter())
        started = time.perf_counter()
        try:
            await reader.read(_receiver([b"x" * 100], then_wait=True), started)
        except RequestError as e:
            assert 0.2 + 0.1 <= time.perf_counter() - started < 1.5  # grace + 100 bytes at 1000/s
            return body, e
        raise AssertionError("the stalled body was read")

    body, error = asyncio.run(scenario())
    assert body == b"abcd"
    assert (error.status, error.close) == (408, True)
    assert "100 bytes" in error.message
