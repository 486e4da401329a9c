"""Live quality end to end on one machine: a version trained by `mlkube-runtime train`, served by a
real server process that logs requests with ids, ground truth posted to its /feedback (30% of the
labels flipped on purpose, plus a business outcome), then `mlkube-runtime drift` judging the
watched version on both drift and labels, with the estimate from probabilities beside it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.datasets import load_iris

from mlkube.api.driftmonitor import DriftMonitorSpec
from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.layout import (
    CALIBRATION_FILE,
    LOG_TS_COLUMN,
    feedback_uri,
    inference_log_uri,
    version_log_uri,
)
from mlkube.runtime.datasets import _snake
from mlkube.runtime.inference_log import segment_name
from mlkube.runtime.quality import version_performance
from mlkube.runtime.train import TrainRequest, train
from tests.runtime.servers import SERVE_COMMAND, start_server
from tests.unit.test_quality import log_window

pytestmark = pytest.mark.runtime

IRIS = load_iris(as_frame=True).frame.rename(columns=_snake)
FEATURES = [c for c in IRIS.columns if c != "target"]
FLIPPED = set(random.Random(15).sample(range(150), 45))  # 30% of the labels are wrong


@dataclass(frozen=True)
class Served:
    version_dir: str
    log: str
    ids: list[str]


def served(root: Path, flip: bool) -> Served:
    """Train iris-v1, serve it, send 150 rows with ids, post their labels, stop the server."""
    spec = TrainingJobSpec.model_validate(
        {
            "model": "iris",
            "dataset": {"uri": "builtin:iris"},
            "estimator": {
                "className": "sklearn.linear_model.LogisticRegression",
                "hyperparameters": {"max_iter": 500},
            },
        }
    )
    result = train(TrainRequest(spec=spec, artifact_root=str(root), namespace="ns", version=1))
    log = inference_log_uri(str(root), "ns", "iris")
    env = {
        "MLKUBE_MODEL_URI": result["artifactUri"],
        "MLKUBE_MODEL_SHA256": result["sha256"],
        "MLKUBE_MODEL_VERSION": "iris-v1",
        "MLKUBE_INFERENCE_LOG_URI": log,
    }
    server = start_server(SERVE_COMMAND, env, root / "server.log")
    try:
        server.wait_ready()
        ids: list[str] = []
        records = IRIS[FEATURES].to_dict(orient="records")
        for start in range(0, 150, 10):
            answer = httpx.post(
                f"{server.url}/predict",
                json={"instances": records[start : start + 10]},
                headers={"X-Request-ID": f"order-{start}"},
            )
            assert answer.status_code == 200, answer.text
            ids += answer.json()["requestIds"]
        truth = IRIS["target"].tolist()
        labels = [
            {
                "requestId": ids[i],
                "label": (truth[i] + 1) % 3 if flip and i in FLIPPED else truth[i],
                "outcomes": {"revenue": 2.5},
            }
            for i in range(150)
        ]
        stored = httpx.post(f"{server.url}/feedback", json={"feedback": labels})
        assert stored.status_code == 200, stored.text
    finally:
        server.stop()  # SIGTERM, as the kubelet sends it: both logs are flushed
    return Served(result["artifactUri"], log, ids)


def drift(root: Path, s: Served, performance: dict[str, Any], *model: str) -> dict[str, Any]:
    spec = root / "monitor.yaml"
    spec.write_text(
        yaml.safe_dump({"deployment": "iris", "window": {"rows": 150}, "performance": performance})
    )
    out = root / "result.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "mlkube.runtime.cli", "drift", "--spec", str(spec),
            "--reference", f"{s.version_dir}/reference.parquet", "--log", s.log,
            *model, "--result-file", str(out),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    assert len(out.read_bytes()) <= 4096
    return result


WATCH = {
    "metric": "Accuracy",
    "maxDrop": "0.1",
    "minLabelledRows": 100,
    "outcomes": [{"name": "revenue", "aggregate": "Sum"}],
    "sliceBy": "sepal_width_cm",
}


@pytest.fixture(scope="module")
def wrong_labels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Served]:
    root = tmp_path_factory.mktemp("wrong")
    return root, served(root, flip=True)


def test_flipped_labels_degrade_live_accuracy_while_the_estimate_stays_high(
    wrong_labels: tuple[Path, Served],
) -> None:
    root, s = wrong_labels
    result = drift(root, s, WATCH, "--model-version", "iris-v1", "--model-uri", s.version_dir)
    assert result["verdict"] == "NoDrift", "the inputs are the training data itself"
    quality = result["performance"]
    assert quality["verdict"] == "Degraded", quality
    assert quality["modelVersion"] == "iris-v1"
    assert (quality["rows"], quality["labelled"]) == (150, 150)
    assert float(quality["value"]) == pytest.approx(0.7, abs=0.06)
    assert float(quality["offline"]) > 0.9
    assert float(quality["estimated"]["accuracy"]) > 0.85, "CBPE cannot see wrong labels"
    assert float(quality["outcomes"]["revenue"]["sum"]) == pytest.approx(375.0)
    assert quality["slices"]["by"] == "sepal_width_cm"


def test_without_the_versions_artifact_quality_is_an_error_and_drift_still_reports(
    wrong_labels: tuple[Path, Served],
) -> None:
    root, s = wrong_labels
    result = drift(root, s, WATCH, "--model-version", "iris-v1")
    assert result["verdict"] == "NoDrift"
    assert result["performance"]["verdict"] == "Error"
    assert "--model-uri" in result["performance"]["reason"]


def test_true_labels_are_healthy(tmp_path: Path) -> None:
    s = served(tmp_path, flip=False)
    result = drift(tmp_path, s, WATCH, "--model-version", "iris-v1", "--model-uri", s.version_dir)
    quality = result["performance"]
    assert quality["verdict"] == "Healthy", quality
    assert float(quality["value"]) > 0.9


def test_a_regressor_without_calibration_is_judged_on_its_labels(tmp_path: Path) -> None:
    """No calibration.json (a regressor has no probabilities): the realised MAE still comes."""
    spec = TrainingJobSpec.model_validate(
        {
            "model": "diabetes",
            "dataset": {"uri": "builtin:diabetes"},
            "estimator": {"className": "sklearn.linear_model.Ridge"},
        }
    )
    result = train(TrainRequest(spec=spec, artifact_root=str(tmp_path), namespace="ns", version=1))
    assert CALIBRATION_FILE not in result["files"]
    log = inference_log_uri(str(tmp_path), "ns", "diabetes")
    now = time.time()
    ids = [f"r{i}-0" for i in range(120)]
    predictions = [100.0 + i for i in range(120)]
    table = log_window(ids, predictions, [int(now * 1000) - 5000] * 120, version="diabetes-v1")
    directory = Path(version_log_uri(log, "diabetes-v1").removeprefix("file://"))
    directory.mkdir(parents=True)
    pq.write_table(table, directory / segment_name(now - 5, "pod-a", 1))
    labels = pa.table(
        {
            "requestId": ids,
            "label": [p + 10.0 for p in predictions],  # every answer 10 too low
            LOG_TS_COLUMN: pa.array([int(now * 1000)] * 120, pa.int64()),
        }
    )
    feedback = Path(feedback_uri(log).removeprefix("file://"))
    feedback.mkdir(parents=True)
    pq.write_table(labels, feedback / segment_name(now, "pod-a", 1))
    monitor = DriftMonitorSpec.model_validate(
        {"deployment": "diabetes", "window": {"rows": 1000}, "performance": {"metric": "Mae"}}
    )
    quality = version_performance(monitor, log, "diabetes-v1", result["artifactUri"])
    assert quality["verdict"] == "Healthy", quality  # reported, no threshold set
    assert float(quality["value"]) == pytest.approx(10.0)
    assert "estimated" not in quality
