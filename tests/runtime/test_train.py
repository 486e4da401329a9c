"""`mlkube-runtime train` with real scikit-learn on the datasets scikit-learn ships."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.layout import CALIBRATION_FILE
from mlkube.runtime import artifacts
from mlkube.runtime.outcome import RunFailure
from mlkube.runtime.quality import Calibration
from mlkube.runtime.train import Champion, TrainRequest, termination_message, train


def spec(**overrides: Any) -> TrainingJobSpec:
    base: dict[str, Any] = {
        "model": "iris",
        "dataset": {"uri": "builtin:iris"},
        "estimator": {
            "className": "sklearn.linear_model.LogisticRegression",
            "hyperparameters": {"max_iter": 500},
        },
    }
    base.update(overrides)
    return TrainingJobSpec.model_validate(base)


def request(tmp_path: Path, s: TrainingJobSpec, version: int = 1, **extra: Any) -> TrainRequest:
    return TrainRequest(
        spec=s, artifact_root=str(tmp_path), namespace="ns", version=version, **extra
    )


def failure(tmp_path: Path, s: TrainingJobSpec, **extra: Any) -> RunFailure:
    with pytest.raises(RunFailure) as caught:
        train(request(tmp_path, s, **extra))
    return caught.value


def test_training_writes_a_complete_version_directory(tmp_path: Path) -> None:
    result = train(request(tmp_path, spec()))
    directory = tmp_path / "ns" / "iris" / "1"
    assert result["status"] == "Succeeded"
    assert result["artifactUri"] == f"file://{directory}"
    assert float(result["metrics"]["accuracy"]) > 0.9
    assert result["classes"] == ["0", "1", "2"]
    assert result["columns"][0] == ["sepal_length_cm", "float"]
    for name in (
        "model.joblib",
        "model.sha256",
        "schema.json",
        "metrics.json",
        "lineage.json",
        "reference.parquet",
    ):
        assert (directory / name).exists(), name
    assert (directory / "model.sha256").read_text() == result["sha256"]
    lineage = json.loads((directory / "lineage.json").read_text())
    assert lineage["datasetDigest"] == result["datasetDigest"]
    assert lineage["seed"] == 42
    assert lineage["params"] == {"max_iter": 500}
    assert "scikit-learn" in lineage["libraries"]
    reference = pd.read_parquet(directory / "reference.parquet")
    assert list(reference.columns) == [c for c, _ in result["columns"]]
    assert "target" not in reference.columns


def test_same_spec_and_seed_give_the_same_metrics_and_model(tmp_path: Path) -> None:
    s = spec(
        estimator={
            "className": "sklearn.ensemble.RandomForestClassifier",
            "hyperparameters": {"n_estimators": 20},
        }
    )
    first = train(request(tmp_path, s, version=1))
    second = train(request(tmp_path, s, version=2))
    assert first["metrics"] == second["metrics"]
    assert first["datasetDigest"] == second["datasetDigest"]
    other_seed = train(
        request(tmp_path, spec(estimator=s.estimator.to_api(), split={"seed": 1}), version=3)
    )
    assert other_seed["metrics"] != first["metrics"] or other_seed["sha256"] != first["sha256"]


@pytest.mark.parametrize(
    ("dataset", "estimator", "metric"),
    [
        ("wine", "sklearn.ensemble.RandomForestClassifier", "accuracy"),
        ("breast_cancer", "sklearn.ensemble.HistGradientBoostingClassifier", "f1"),
        ("diabetes", "sklearn.linear_model.Ridge", "r2"),
    ],
)
def test_every_bundled_dataset_trains(
    tmp_path: Path, dataset: str, estimator: str, metric: str
) -> None:
    result = train(
        request(
            tmp_path,
            spec(
                model=dataset.replace("_", "-"),
                dataset={"uri": f"builtin:{dataset}"},
                estimator={"className": estimator},
            ),
        )
    )
    assert metric in result["metrics"]
    if metric == "r2":
        assert result["classes"] is None
        assert {"rmse", "mae"} <= result["metrics"].keys()


def test_csv_and_parquet_files_with_a_categorical_column(tmp_path: Path) -> None:
    frame = load_wine(as_frame=True).frame
    frame["region"] = ["north", "south", "east"] * (len(frame) // 3) + ["north"] * (len(frame) % 3)
    frame.to_csv(tmp_path / "wine.csv", index=False)
    frame.to_parquet(tmp_path / "wine.parquet")
    for name in ("wine.csv", "wine.parquet"):
        result = train(
            request(
                tmp_path,
                spec(
                    model="wine",
                    dataset={"uri": f"file://{tmp_path / name}"},
                    estimator={"className": "sklearn.ensemble.RandomForestClassifier"},
                ),
            )
        )
        assert ["region", "string"] in result["columns"]
        model = artifacts.load_verified_model(result["artifactUri"])
        assert len(model.predict(frame.drop(columns="target").head(3))) == 3  # type: ignore[attr-defined]


def test_quality_gate_failure_names_the_gate_and_stores_nothing(tmp_path: Path) -> None:
    caught = failure(tmp_path, spec(qualityGates={"minAccuracy": "0.999", "minF1": "0.5"}))
    assert caught.reason == "QualityGateFailed"
    assert "qualityGates.minAccuracy" in caught.message
    assert "minF1" not in caught.message
    assert not (tmp_path / "ns").exists()


def test_regression_gates(tmp_path: Path) -> None:
    caught = failure(
        tmp_path,
        spec(
            model="diabetes",
            dataset={"uri": "builtin:diabetes"},
            estimator={"className": "sklearn.linear_model.Ridge"},
            qualityGates={"maxRmse": "10", "minR2": "0.1"},
        ),
    )
    assert "qualityGates.maxRmse" in caught.message
    assert "minR2" not in caught.message


def test_champion_gate_compares_on_the_same_split(tmp_path: Path) -> None:
    champion = train(
        request(
            tmp_path,
            spec(estimator={"className": "sklearn.ensemble.RandomForestClassifier"}),
            version=1,
        )
    )
    weak = spec(
        estimator={
            "className": "sklearn.tree.DecisionTreeClassifier",
            "hyperparameters": {"max_depth": 1},
        },
        qualityGates={"champion": {"modelVersion": "iris-v1", "minImprovement": "0"}},
    )
    caught = failure(
        tmp_path, weak, version=2, champion=Champion(champion["artifactUri"], champion["sha256"])
    )
    assert caught.reason == "QualityGateFailed"
    assert "qualityGates.champion" in caught.message
    assert "iris-v1" in caught.message
    strong = weak.model_copy(update={"estimator": spec().estimator})
    assert train(
        request(
            tmp_path,
            strong,
            version=3,
            champion=Champion(champion["artifactUri"], champion["sha256"]),
        )
    )


def test_a_champion_gate_without_its_artifact_fails_instead_of_passing_quietly(
    tmp_path: Path,
) -> None:
    gated = spec(qualityGates={"champion": {"deployment": "iris"}})
    caught = failure(tmp_path, gated)  # as on a laptop, without --champion-uri
    assert caught.reason == "ChampionNotFound"
    assert "the version Deployment iris serves was not resolved" in caught.message
    assert "--champion-uri" in caught.message


def test_missing_dataset_is_dataset_not_found(tmp_path: Path) -> None:
    assert (
        failure(tmp_path, spec(dataset={"uri": f"file://{tmp_path}/nope.csv"})).reason
        == "DatasetNotFound"
    )
    unknown = failure(tmp_path, spec(dataset={"uri": "builtin:mnist"}))
    assert unknown.reason == "DatasetNotFound"
    assert "iris" in unknown.message


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"target": "species"}, "'species'"),
        ({"features": ["sepal_length_cm", "petal_area"]}, "'petal_area'"),
        ({"dataTests": {"minRows": 1000}}, "dataTests.minRows"),
        (
            {"dataTests": {"ranges": [{"column": "petal_length_cm", "max": "5"}]}},
            "'petal_length_cm'",
        ),
        ({"dataTests": {"ranges": [{"column": "sepal_width_cm", "min": "2.5"}]}}, "below min 2.5"),
    ],
)
def test_data_tests_stop_the_run_and_name_the_column(
    tmp_path: Path, overrides: dict[str, Any], named: str
) -> None:
    caught = failure(tmp_path, spec(**overrides))
    assert caught.reason == "DataValidationFailed"
    assert named in caught.message


def test_missing_values_are_refused_by_default(tmp_path: Path) -> None:
    frame = load_wine(as_frame=True).frame
    frame.loc[::10, "alcohol"] = None
    frame.to_csv(tmp_path / "holes.csv", index=False)
    caught = failure(
        tmp_path, spec(model="wine", dataset={"uri": f"file://{tmp_path / 'holes.csv'}"})
    )
    assert "'alcohol'" in caught.message
    assert "missing" in caught.message


def test_bad_hyperparameters_fail_clearly(tmp_path: Path) -> None:
    caught = failure(
        tmp_path,
        spec(
            estimator={
                "className": "sklearn.linear_model.LogisticRegression",
                "hyperparameters": {"depth": 3},
            }
        ),
    )
    assert caught.reason == "InvalidHyperparameters"
    assert "depth" in caught.message


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    result = train(request(tmp_path, spec()))
    model_file = tmp_path / "ns" / "iris" / "1" / "model.joblib"
    joblib.dump({"evil": True}, model_file)
    with pytest.raises(artifacts.ArtifactError, match="sha256"):
        artifacts.load_verified_model(result["artifactUri"], result["sha256"])


def test_classifiers_record_roc_auc_and_a_calibration_with_its_digest(tmp_path: Path) -> None:
    result = train(
        request(
            tmp_path,
            spec(
                model="cancer",
                dataset={"uri": "builtin:breast_cancer"},
                estimator={"className": "sklearn.naive_bayes.GaussianNB"},
            ),
        )
    )
    assert 0.9 < float(result["metrics"]["roc_auc"]) <= 1
    path = tmp_path / "ns" / "cancer" / "1" / CALIBRATION_FILE
    assert result["files"][CALIBRATION_FILE] == artifacts.sha256_hex(path.read_bytes())
    calibration = Calibration.from_json(json.loads(path.read_text()))
    assert calibration.classes == [0, 1]
    assert list(calibration.knots) == [1]  # binary: the second class, the first its complement


def test_multiclass_roc_auc_is_one_vs_rest(tmp_path: Path) -> None:
    result = train(request(tmp_path, spec()))
    assert "roc_auc" in result["metrics"]
    calibration = json.loads((tmp_path / "ns" / "iris" / "1" / CALIBRATION_FILE).read_text())
    assert set(calibration["knots"]) <= {"0", "1", "2"}


def test_no_probabilities_no_roc_auc_and_no_calibration(tmp_path: Path) -> None:
    result = train(
        request(
            tmp_path,
            spec(estimator={"className": "sklearn.svm.SVC", "hyperparameters": {}}),
        )
    )
    assert "roc_auc" not in result["metrics"]
    assert CALIBRATION_FILE not in result["files"]
    regressor = train(
        request(
            tmp_path,
            spec(
                model="diabetes",
                dataset={"uri": "builtin:diabetes"},
                estimator={"className": "sklearn.linear_model.Ridge"},
            ),
        )
    )
    assert CALIBRATION_FILE not in regressor["files"]
    assert "roc_auc" not in regressor["metrics"]


def test_termination_message_fits_4_kib_even_with_many_columns() -> None:
    big = {
        "status": "Succeeded",
        "columns": [[f"feature_{i:04d}", "float"] for i in range(500)],
        "metrics": {},
    }
    message = termination_message(big)
    assert len(message.encode()) <= 4096
    assert json.loads(message)["schemaTruncated"] is True


def test_cli_prints_the_result_and_exits_3_on_a_permanent_failure(tmp_path: Path) -> None:
    manifest = tmp_path / "tj.yaml"
    manifest.write_text(
        "apiVersion: mlkube.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: t}\n"
        "spec: {model: iris, dataset: {uri: 'builtin:iris'}, estimator: {className: sklearn.naive_bayes.GaussianNB}}\n"
    )
    result_file = tmp_path / "result.json"
    command = [
        sys.executable,
        "-m",
        "mlkube.runtime.cli",
        "train",
        "--spec",
        str(manifest),
        "--artifact-root",
        str(tmp_path / "store"),
        "--result-file",
        str(result_file),
    ]
    ok = subprocess.run(command, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(result_file.read_text())["version"] == 1
    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert json.loads(again.stdout)["version"] == 2, "laptop runs take the next free version"

    manifest.write_text(manifest.read_text().replace("builtin:iris", "builtin:nothing"))
    failed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert failed.returncode == 3
    assert json.loads(failed.stdout)["reason"] == "DatasetNotFound"


def test_cli_rejects_an_estimator_off_the_allowlist(tmp_path: Path) -> None:
    manifest = tmp_path / "tj.yaml"
    manifest.write_text(
        "model: x\ndataset: {uri: 'builtin:iris'}\nestimator: {className: os.system}\n"
    )
    failed = subprocess.run(
        [sys.executable, "-m", "mlkube.runtime.cli", "train", "--spec", str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 3
    assert "estimator.className" in failed.stderr or "className" in failed.stderr
    assert "allowlisted" in failed.stderr
