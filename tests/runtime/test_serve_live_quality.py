"""Live quality in real server processes: two pods of one Deployment share its log; labels posted
to either count on the pod that answered the rows, once, as Prometheus counters."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

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

WAIT_SECONDS = 45.0
"""Feedback segments are written within 10 s, and each pod reads new ones every 5 s."""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> IrisArtifact:
    return save_iris_artifact(tmp_path_factory.mktemp("iris-v1"))


@pytest.fixture(scope="module")
def pods(
    artifact: IrisArtifact, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ...]]:
    log = str(tmp_path_factory.mktemp("log"))
    servers = []
    try:
        for pod in ("iris-a", "iris-b"):
            env = model_env(artifact, **{ENV_INFERENCE_LOG_URI: log, "MLKUBE_POD_NAME": pod})
            servers.append(start_server(SERVE_COMMAND, env, tmp_path_factory.mktemp(pod) / "log"))
        for server in servers:
            server.wait_ready()
        yield tuple(servers)
    finally:
        for server in servers:
            server.stop()


def _live(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name
        in (
            "mlkube_labelled_predictions_total",
            "mlkube_correct_predictions_total",
            "mlkube_absolute_error_sum_total",
        )
    }


def test_each_label_counts_once_on_the_pod_that_answered_its_row(
    pods: tuple[ServerProcess, ServerProcess], artifact: IrisArtifact
) -> None:
    answering, other = pods
    assert _live(answering) == {
        "mlkube_labelled_predictions_total": 0.0,
        "mlkube_correct_predictions_total": 0.0,
    }
    answer = httpx.post(
        f"{answering.url}/predict", json={"id": "t", "instances": rows(artifact.features.iloc[::5])}
    ).json()
    predictions, ids = answer["predictions"], answer["requestIds"]
    assert len(ids) == 30
    # 20 labels agree with the answer, 10 do not; posted to the pod that did not answer
    labels = [p if i < 20 else (p + 1) % 3 for i, p in enumerate(predictions)]
    feedback = [{"requestId": r, "label": label} for r, label in zip(ids, labels, strict=True)]
    response = httpx.post(f"{other.url}/feedback", json={"feedback": feedback})
    assert response.json() == {"stored": 30}
    # a correction and a label for no row: neither counts
    httpx.post(
        f"{answering.url}/feedback",
        json={
            "feedback": [
                {"requestId": ids[0], "label": labels[0]},
                {"requestId": "x-0", "label": 1},
            ]
        },
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while (
        time.monotonic() < deadline and _live(answering)["mlkube_labelled_predictions_total"] < 30
    ):
        time.sleep(1)
    time.sleep(6)  # one more read of the feedback: the correction must not count again
    assert _live(answering) == {
        "mlkube_labelled_predictions_total": 30.0,
        "mlkube_correct_predictions_total": 20.0,
    }
    assert _live(other)["mlkube_labelled_predictions_total"] == 0.0, "none of its rows"
