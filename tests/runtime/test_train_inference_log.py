"""Training on labelled production data: `dataset.inferenceLog` joins what a Deployment logged
with the ground truth posted to its /feedback, in the TrainingJob's own namespace only."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_iris

from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.layout import (
    FEEDBACK_LABEL_COLUMN,
    FEEDBACK_REQUEST_ID_COLUMN,
    LOG_MODEL_VERSION_COLUMN,
    LOG_PREDICTION_COLUMN,
    LOG_REQUEST_ID_COLUMN,
    LOG_TS_COLUMN,
    feedback_uri,
    inference_log_uri,
    version_log_uri,
)
from mlkube.runtime.datasets import _snake
from mlkube.runtime.inference_log import segment_name
from mlkube.runtime.outcome import RunFailure
from mlkube.runtime.train import TrainRequest, train

IRIS = load_iris(as_frame=True).frame.rename(columns=_snake)
FEATURES = [c for c in IRIS.columns if c != "target"]


def log_production(root: Path, namespace: str, labelled: int, logged: int = 150) -> None:
    """`logged` iris rows served by iris-v1 and the true labels of the first `labelled`."""
    log = inference_log_uri(str(root), namespace, "iris")
    now = time.time()
    rows = IRIS.iloc[:logged]
    ids = [f"req{i}-0" for i in range(logged)]
    table = pa.table(
        {
            **{name: pa.array(rows[name].to_numpy()) for name in FEATURES},
            LOG_PREDICTION_COLUMN: pa.array(rows["target"].to_numpy()),
            LOG_TS_COLUMN: pa.array([int(now * 1000) - 1000] * logged, pa.int64()),
            LOG_REQUEST_ID_COLUMN: pa.array(ids),
            LOG_MODEL_VERSION_COLUMN: pa.array(["iris-v1"] * logged),
        }
    )
    write(version_log_uri(log, "iris-v1"), table, now)
    feedback = pa.table(
        {
            FEEDBACK_REQUEST_ID_COLUMN: pa.array(ids[:labelled]),
            FEEDBACK_LABEL_COLUMN: pa.array(rows["target"].to_numpy()[:labelled]),
            LOG_TS_COLUMN: pa.array([int(now * 1000)] * labelled, pa.int64()),
        }
    )
    write(feedback_uri(log), feedback, now)


def write(uri: str, table: pa.Table, now: float) -> None:
    directory = Path(uri.removeprefix("file://"))
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / segment_name(now, "pod-a", 1))


def spec(dataset: dict[str, object]) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "model": "iris",
            "dataset": dataset,
            "estimator": {
                "className": "sklearn.linear_model.LogisticRegression",
                "hyperparameters": {"max_iter": 500},
            },
            "dataTests": {"minRows": 20},
        }
    )


def request(root: Path, s: TrainingJobSpec, namespace: str = "team-a") -> TrainRequest:
    return TrainRequest(spec=s, artifact_root=str(root), namespace=namespace, version=2)


def test_training_on_the_labelled_log_records_the_window_in_lineage(tmp_path: Path) -> None:
    log_production(tmp_path, "team-a", labelled=120)
    result = train(request(tmp_path, spec({"inferenceLog": {"deployment": "iris"}})))
    assert result["status"] == "Succeeded"
    window = result["inferenceLog"]
    assert window["deployment"] == "iris"
    assert window["modelVersions"] == ["iris-v1"]
    assert window["rows"] == 120  # only the labelled rows train; the other 30 wait for labels
    assert window["first"] <= window["last"]
    assert [c[0] for c in result["columns"]] == FEATURES


def test_append_original_trains_on_both_and_names_both_in_lineage(tmp_path: Path) -> None:
    log_production(tmp_path, "team-a", labelled=60)
    dataset = {
        "uri": "builtin:iris",
        "inferenceLog": {"deployment": "iris", "appendOriginal": True},
    }
    result = train(request(tmp_path, spec(dataset)))
    assert result["inferenceLog"]["rows"] == 60
    lineage = (tmp_path / "team-a" / "iris" / "2" / "lineage.json").read_text()
    assert "builtin:iris+inferenceLog:iris?all" in lineage


def test_a_log_without_labels_is_dataset_not_found_saying_what_to_do(tmp_path: Path) -> None:
    log_production(tmp_path, "team-a", labelled=0)
    with pytest.raises(RunFailure) as caught:
        train(request(tmp_path, spec({"inferenceLog": {"deployment": "iris"}})))
    assert caught.value.reason == "DatasetNotFound"
    assert "post ground truth to its /feedback first" in str(caught.value)


def test_another_namespaces_log_is_never_read(tmp_path: Path) -> None:
    log_production(tmp_path, "team-a", labelled=150)
    with pytest.raises(RunFailure) as caught:
        train(request(tmp_path, spec({"inferenceLog": {"deployment": "iris"}}), "team-b"))
    assert caught.value.reason == "DatasetNotFound"
    assert "/team-b/_inference/iris" in str(caught.value)
