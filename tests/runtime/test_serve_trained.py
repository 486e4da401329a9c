"""Models as `mlkube-runtime train` makes them, served by a real server process: every answer is
valid JSON, every prediction is counted and logged, and `null` works where training allowed it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.layout import version_log_uri
from mlkube.runtime.inference_log import PREDICTION_COLUMN, read_window
from mlkube.runtime.train import TrainRequest, train
from tests.runtime.servers import SERVE_COMMAND, ServerProcess, start_server

pytestmark = pytest.mark.runtime


def trained(
    tmp_path: Path, frame: pd.DataFrame, target: str, estimator: str, **extra: Any
) -> dict[str, Any]:
    csv = tmp_path / "data.csv"
    frame.to_csv(csv, index=False)
    spec = TrainingJobSpec.model_validate(
        {"model": "m", "dataset": {"uri": f"file://{csv}"}, "target": target,
         "estimator": {"className": estimator}, **extra}
    )  # fmt: skip
    return train(
        TrainRequest(spec=spec, artifact_root=str(tmp_path / "store"), namespace="ns", version=1)
    )


def serving(tmp_path: Path, result: dict[str, Any], log_dir: Path | None = None) -> ServerProcess:
    env = {
        "MLKUBE_MODEL_URI": result["artifactUri"],
        "MLKUBE_MODEL_SHA256": result["sha256"],
        "MLKUBE_MODEL_VERSION": "m-v1",
        "MLKUBE_POD_NAME": "test-pod",
    }
    if log_dir is not None:
        env["MLKUBE_INFERENCE_LOG_URI"] = str(log_dir)
    server = start_server(SERVE_COMMAND, env, tmp_path / "server.log")
    server.wait_ready()
    return server


def strict_json(response: httpx.Response) -> Any:
    """RFC 8259: no NaN, Infinity or -Infinity."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(response.content, parse_constant=refuse)


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """SVC (no predict_proba) with string labels, and features named like the log's columns."""
    tmp_path = tmp_path_factory.mktemp("pets")
    rng = np.random.default_rng(1)
    weight = rng.uniform(2, 40, 200)
    frame = pd.DataFrame(
        {
            "ts": rng.uniform(0, 1, 200),  # a feature named like the log's timestamp
            "prediction": weight,  # and one named like its prediction
            "animal": np.where(weight > 12, "dog", "cat"),
        }
    )
    result = trained(tmp_path, frame, "animal", "sklearn.svm.SVC")
    log_dir = tmp_path / "log"
    server = serving(tmp_path, result, log_dir)
    try:
        yield server, log_dir
    finally:
        server.stop()


def test_feedback_for_string_classes_takes_a_class_name_and_nothing_else(
    pets: tuple[ServerProcess, Path],
) -> None:
    """Labels are checked against the model's classes (the ids need not be known yet)."""
    server, _ = pets
    row_id = "order-17-0"
    good = httpx.post(
        f"{server.url}/feedback", json={"feedback": [{"requestId": row_id, "label": "dog"}]}
    )
    assert (good.status_code, good.json()) == (200, {"stored": 1})
    for label in ["fish", 1, True, None]:
        bad = httpx.post(
            f"{server.url}/feedback", json={"feedback": [{"requestId": row_id, "label": label}]}
        )
        assert bad.status_code == 422, bad.text
        assert bad.json()["requestId"] == row_id and "['cat', 'dog']" in bad.json()["error"]


def test_a_classifier_without_probabilities_and_string_labels_is_counted_and_logged(
    pets: tuple[ServerProcess, Path],
) -> None:
    """Item 6 and item 8: labels, metrics and log rows; the `ts` and `prediction` features kept."""
    server, log_dir = pets
    instances = [{"ts": 0.25, "prediction": 3.0}, {"ts": 0.75, "prediction": 35.0}]
    answer = httpx.post(f"{server.url}/predict", json={"instances": instances})
    assert answer.status_code == 200
    assert strict_json(answer)["predictions"] == ["cat", "dog"]
    assert "probabilities" not in strict_json(answer)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'mlkube_predictions_total{label="cat",model_version="m-v1"} 1.0' in metrics
    assert 'mlkube_predictions_total{label="dog",model_version="m-v1"} 1.0' in metrics
    server.stop()  # a graceful stop (SIGTERM) writes the buffered log rows
    assert "Error" not in server.output()
    logged = read_window(version_log_uri(str(log_dir), "m-v1"), rows=10).to_pandas()
    assert logged["ts"].tolist() == [0.25, 0.75]
    assert logged["prediction"].tolist() == [3.0, 35.0]
    assert logged[PREDICTION_COLUMN].tolist() == ["cat", "dog"]


def test_a_non_finite_prediction_is_refused_naming_the_row_in_valid_json(tmp_path: Path) -> None:
    """Item 7: LinearRegression on target = 3x answers x = 1e308 with no `Infinity`."""
    x = np.linspace(-10, 10, 50)
    result = trained(
        tmp_path, pd.DataFrame({"x": x, "y": 3 * x}), "y", "sklearn.linear_model.LinearRegression"
    )
    server = serving(tmp_path, result)
    try:
        fine = httpx.post(f"{server.url}/predict", json={"instances": [{"x": 1.0}]})
        assert strict_json(fine)["predictions"] == pytest.approx([3.0])
        answer = httpx.post(f"{server.url}/predict", json={"instances": [{"x": 1.0}, {"x": 1e308}]})
        assert answer.status_code == 422
        error = strict_json(answer)["error"]
        assert "answer for row 1 is not finite (prediction [inf])" in error, error
    finally:
        server.stop()


def test_null_is_accepted_exactly_where_training_allowed_missing_values(tmp_path: Path) -> None:
    """Item 5: the stored imputer answers `null` for monthly_fee; tenure_months refuses it."""
    rng = np.random.default_rng(2)
    fee = rng.uniform(10, 100, 300)
    tenure = rng.integers(1, 72, 300).astype(float)
    frame = pd.DataFrame(
        {"monthly_fee": fee, "tenure_months": tenure, "plan": rng.choice(["a", "b"], 300)}
    )
    frame["churned"] = np.where(fee / 100 > tenure / 72, "yes", "no")
    frame.loc[::15, "monthly_fee"] = None
    frame.loc[5::15, "plan"] = None
    result = trained(
        tmp_path, frame, "churned", "sklearn.linear_model.LogisticRegression",
        dataTests={"maxMissingPercent": 10, "columns": [{"name": "tenure_months", "allowMissing": False}]},
    )  # fmt: skip
    server = serving(tmp_path, result)
    try:
        row = {"monthly_fee": None, "tenure_months": 12, "plan": None}
        answer = httpx.post(f"{server.url}/predict", json={"instances": [row]})
        assert answer.status_code == 200, answer.text
        assert strict_json(answer)["predictions"][0] in ("yes", "no")
        columnar = {"monthly_fee": [50.0, None], "tenure_months": [3, 60], "plan": ["a", "b"]}
        assert httpx.post(f"{server.url}/predict", json={"inputs": columnar}).status_code == 200
        refused = httpx.post(
            f"{server.url}/predict", json={"instances": [{**row, "tenure_months": None}]}
        )
        assert refused.status_code == 422
        assert strict_json(refused)["column"] == "tenure_months"
    finally:
        server.stop()
