"""spec.tracking.mlflow: the trainer logs its run to a real `mlflow server` (hack/mlflow: SQLite,
basic auth), registers the model, and names an unreachable or refusing server."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.runtime.outcome import RunFailure
from mlkube.runtime.train import TrainRequest, train
from tests.mlflow_fixtures import MlflowServer, Team


def spec(tracking: dict[str, Any], **overrides: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "model": "iris",
            "dataset": {"uri": "builtin:iris"},
            "estimator": {
                "className": "sklearn.linear_model.LogisticRegression",
                "hyperparameters": {"max_iter": 500, "C": 0.5},
            },
            "preprocessing": {"numeric": {"scale": "Standard"}},
            "split": {"seed": 7},
            "tracking": {"mlflow": tracking},
            **overrides,
        }
    )


def run_training(tmp_path: Path, s: TrainingJobSpec) -> dict[str, Any]:
    return train(
        TrainRequest(
            spec=s, artifact_root=str(tmp_path), namespace="team-a", version=4,
            training_job="iris-nightly", image="localhost/mlkube-runtime:test",
        )
    )  # fmt: skip


def as_team(monkeypatch: pytest.MonkeyPatch, team: Team | None) -> None:
    """The credentials a trainer pod gets from its credentialsSecret (none: no Secret)."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (team.env if team else {}).items():
        monkeypatch.setenv(name, value)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_tracked_training_logs_its_run_and_registers_the_model(
    tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    team, experiment, registered = mlflow_server.team("team-a"), unique("iris"), unique("iris")
    as_team(monkeypatch, team)
    tracking = {"trackingUri": mlflow_server.uri, "experiment": experiment,
                "registeredModel": registered}  # fmt: skip
    result = run_training(tmp_path, spec(tracking))

    run_id = result["tracking"]["runId"]
    assert result["tracking"]["runUrl"].startswith(f"{mlflow_server.uri}/#/experiments/")
    assert result["tracking"]["registeredVersion"] == "1"
    run = mlflow_server.run(run_id)
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == "iris-nightly", "runName defaults to the TrainingJob's name"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["estimator"] == "sklearn.linear_model.LogisticRegression"
    assert (params["estimator.C"], params["estimator.max_iter"]) == ("0.5", "500")
    assert params["preprocessing.numeric.scale"] == "Standard"
    assert (params["split.seed"], params["split.testPercent"]) == ("7", "20")
    assert params["dataset.uri"] == "builtin:iris"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert {k: f"{v:.6g}" for k, v in metrics.items()} == result["metrics"], "held-out metrics"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert {k: tags[k] for k in ("mlkube.namespace", "mlkube.trainingJob", "mlkube.model",
                                  "mlkube.version", "mlkube.image")} == {
        "mlkube.namespace": "team-a", "mlkube.trainingJob": "iris-nightly",
        "mlkube.model": "iris", "mlkube.version": "4",
        "mlkube.image": "localhost/mlkube-runtime:test",
    }  # fmt: skip
    assert tags["mlkube.dataset.digest"] == result["datasetDigest"]
    inputs = run["inputs"]["dataset_inputs"]
    assert inputs[0]["dataset"]["name"] == "builtin:iris"
    assert inputs[0]["tags"][0] == {"key": "mlflow.data.context", "value": "training"}

    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(mlflow_server.uri)
    info = mlflow.models.get_model_info(f"models:/{registered}/1")
    assert info.signature is not None
    inputs_schema = info.signature.inputs.to_dict()
    assert [(c["name"], c["type"]) for c in inputs_schema][:2] == [
        ("sepal_length_cm", "double"), ("sepal_width_cm", "double")
    ]  # fmt: skip
    assert info.flavors["sklearn"]["serialization_format"] == "cloudpickle"
    model = mlflow.sklearn.load_model(f"models:/{registered}/1")
    rows = pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=[c["name"] for c in inputs_schema])
    assert list(model.predict(rows)) == [0], "the registered model predicts as trained"
    version = mlflow.MlflowClient().get_model_version(registered, "1")
    assert version.tags["mlkube.modelVersion"] == "iris-v4"
    assert version.run_id == run_id


def test_a_failed_training_ends_its_run_failed_with_the_reason(
    tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_team(monkeypatch, mlflow_server.team("team-a"))
    experiment = unique("iris")
    tracking = {"trackingUri": mlflow_server.uri, "experiment": experiment}
    with pytest.raises(RunFailure) as caught:
        run_training(tmp_path, spec(tracking, qualityGates={"minAccuracy": "1.01"}))
    assert caught.value.reason == "QualityGateFailed"
    _, found = mlflow_server.rest(
        "POST", "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment_id(mlflow_server, experiment)]},
    )  # fmt: skip
    (run,) = found["runs"]
    assert run["info"]["status"] == "FAILED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["mlkube.reason"] == "QualityGateFailed"


def experiment_id(server: MlflowServer, name: str) -> str:
    status, body = server.rest(
        "GET", f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"
    )
    assert status == 200, body
    return str(body["experiment"]["experiment_id"])


def test_an_unreachable_server_fails_a_required_run_before_fitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_team(monkeypatch, None)
    uri = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(RunFailure) as caught:
        run_training(tmp_path, spec({"trackingUri": uri, "experiment": "iris"}))
    assert caught.value.reason == "TrackingUnavailable"
    assert caught.value.message.startswith(
        f"tracking.mlflow: cannot start a run in experiment 'iris' at {uri}: cannot connect"
    )
    assert not caught.value.permanent, "the server may be back at the Job's next try"
    assert time.monotonic() - started < 30, "bounded retries, not MLflow's minutes"
    assert not (tmp_path / "team-a").exists(), "nothing trained or stored"


def test_an_unreachable_server_only_warns_when_tracking_is_not_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_team(monkeypatch, None)
    uri = f"http://127.0.0.1:{closed_port()}"
    result = run_training(
        tmp_path, spec({"trackingUri": uri, "experiment": "iris", "required": False})
    )
    assert result["status"] == "Succeeded"
    assert (tmp_path / "team-a" / "iris" / "4" / "model.joblib").exists()
    assert result["tracking"]["unavailable"].startswith(
        f"tracking.mlflow: cannot start a run in experiment 'iris' at {uri}"
    )


def test_another_team_cannot_write_into_a_teams_experiment(
    tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tenancy is MLflow's own auth: team A's run creates its experiment (A may manage it);
    team B's credentials, or none, are refused, and the refusal is named."""
    experiment = unique("team-a-iris")
    tracking = {"trackingUri": mlflow_server.uri, "experiment": experiment}
    as_team(monkeypatch, mlflow_server.team("team-a"))
    run_training(tmp_path / "a", spec(tracking))
    as_team(monkeypatch, mlflow_server.team("team-b"))
    with pytest.raises(RunFailure) as caught:
        run_training(tmp_path / "b", spec(tracking))
    assert caught.value.reason == "TrackingUnavailable"
    assert "PERMISSION_DENIED" in caught.value.message
    as_team(monkeypatch, None)
    with pytest.raises(RunFailure) as anonymous:
        run_training(tmp_path / "c", spec(tracking))
    assert "401" in anonymous.value.message or "UNAUTHENTICATED" in anonymous.value.message
    _, found = mlflow_server.rest(
        "POST", "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment_id(mlflow_server, experiment)]},
    )  # fmt: skip
    assert len(found["runs"]) == 1, "only team A's run is in team A's experiment"
