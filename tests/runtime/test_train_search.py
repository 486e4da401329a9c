"""`mlkube-runtime train --trial` and the winner's training, with real scikit-learn against a real
store (a local path, and SeaweedFS's S3 for the tenancy check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.runtime import artifacts
from mlkube.runtime.outcome import RunFailure
from mlkube.runtime.search import trial_parameters, trial_uri, trials_uri
from mlkube.runtime.train import TrainRequest, _folds, _prepare, read_trials, run_trial, train
from tests.s3_fixtures import S3Server

RUNTIME = [sys.executable, "-m", "mlkube.runtime.cli"]
C_GRID = {"method": "Grid", "space": {"C": {"values": [0.001, 0.1, 10, -1]}}}
"""C=-1: LogisticRegression refuses it when fitting."""


def spec(search: dict[str, Any] = C_GRID, **overrides: Any) -> TrainingJobSpec:
    base: dict[str, Any] = {
        "model": "iris",
        "dataset": {"uri": "builtin:iris"},
        "estimator": {
            "className": "sklearn.linear_model.LogisticRegression",
            "hyperparameters": {"max_iter": 500},
        },
        "search": search,
        "qualityGates": {"minAccuracy": "0.8"},
    }
    base.update(overrides)
    return TrainingJobSpec.model_validate(base)


def request(root: str, s: TrainingJobSpec, namespace: str = "ns", version: int = 1) -> TrainRequest:
    return TrainRequest(s, root, namespace, version, training_job="iris-search")


def run_all(r: TrainRequest) -> list[dict[str, Any]]:
    assert r.spec.search is not None
    return [run_trial(r, i, pod=f"iris-trials-{i}") for i in range(r.spec.search.trial_count())]


def test_each_trial_records_its_parameters_metric_time_and_pod_or_why_it_failed(
    tmp_path: Path,
) -> None:
    r = request(str(tmp_path), spec())
    records = run_all(r)
    assert [rec["status"] for rec in records] == ["Succeeded"] * 3 + ["Failed"]
    best = records[2]
    assert best["parameters"] == {"C": 10} and best["metric"] == "accuracy"
    assert 0 < float(best["value"]) <= 1 and float(best["fitSeconds"]) >= 0
    assert best["pod"] == "iris-trials-2"
    refused = records[3]
    assert refused["reason"] == "InvalidHyperparameters"
    assert "'C'" in refused["message"] and refused["parameters"] == {"C": -1}
    stored = artifacts.read_json(trial_uri(trials_uri(str(tmp_path), "ns", "iris", 1), 2))
    assert stored == best, "the store holds what the pod reports"


def test_a_retried_trial_writes_the_same_record_again(tmp_path: Path) -> None:
    r = request(str(tmp_path), spec())
    first = run_trial(r, 1)
    again = run_trial(r, 1)
    drop = ("fitSeconds",)
    assert {k: v for k, v in first.items() if k not in drop} == {
        k: v for k, v in again.items() if k not in drop
    }
    assert len(list((tmp_path / "ns" / "iris" / "1" / "trials").iterdir())) == 1


def test_validation_is_carved_from_the_training_split_the_test_split_untouched(
    tmp_path: Path,
) -> None:
    for search in (C_GRID, {**C_GRID, "cvFolds": 3}):
        r = request(str(tmp_path), spec(search))
        prepared = _prepare(r)
        test_rows = set(prepared.x_test.index)
        folds = _folds(r.spec, prepared, 42)
        assert len(folds) == (3 if "cvFolds" in search else 1)
        for x_fit, _, x_val, _ in folds:
            assert not (set(x_fit.index) | set(x_val.index)) & test_rows
            assert set(x_fit.index) | set(x_val.index) == set(prepared.x_train.index)


def test_the_winner_is_trained_once_gated_and_recorded_with_its_hyperparameters(
    tmp_path: Path,
) -> None:
    r = request(str(tmp_path), spec())
    run_all(r)
    result = train(r)
    assert result["status"] == "Succeeded"
    search = result["search"]
    assert (search["trials"], search["failed"], search["metric"]) == (4, 1, "accuracy")
    assert search["winner"]["index"] == 2 and search["winner"]["parameters"] == {"C": 10}
    assert result["params"] == {"max_iter": 500, "C": 10}
    lineage = artifacts.read_json(f"{result['artifactUri']}/lineage.json")
    assert lineage["params"] == {"max_iter": 500, "C": 10}
    model = artifacts.load_verified_model(result["artifactUri"], result["sha256"])
    assert model.named_steps["estimator"].C == 10  # type: ignore[attr-defined]


def test_a_winner_that_misses_a_gate_fails_the_training(tmp_path: Path) -> None:
    r = request(str(tmp_path), spec(qualityGates={"minAccuracy": "1"},
                                     search={"method": "Grid", "space": {"C": {"values": [1e-4]}}}))  # fmt: skip
    run_all(r)
    with pytest.raises(RunFailure) as failed:
        train(r)
    assert failed.value.reason == "QualityGateFailed"


def test_when_every_trial_failed_the_first_trials_reason_fails_the_training(
    tmp_path: Path,
) -> None:
    r = request(str(tmp_path), spec({"method": "Grid", "space": {"C": {"values": [-1, -2]}}}))
    run_all(r)
    with pytest.raises(RunFailure) as failed:
        train(r)
    assert failed.value.reason == "InvalidHyperparameters"
    assert failed.value.message.startswith("every trial failed; trial 0: ")


def test_a_trial_without_a_record_counts_as_failed(tmp_path: Path) -> None:
    r = request(str(tmp_path), spec())
    run_trial(r, 2)
    records = read_trials(r)
    assert [rec["status"] for rec in records] == ["Failed", "Failed", "Succeeded", "Failed"]
    assert records[1]["reason"] == "NoResult"
    assert train(r)["search"]["winner"]["index"] == 2


RANDOM = {"method": "Random", "trials": 5, "seed": 11,
          "space": {"C": {"min": "0.001", "max": "100", "log": True}}}  # fmt: skip


def test_the_same_seed_gives_the_same_trials_and_the_same_winner(tmp_path: Path) -> None:
    s = spec(RANDOM)
    winners = []
    for version in (1, 2):
        r = request(str(tmp_path), s, version=version)
        records = run_all(r)
        winners.append((train(r)["search"]["winner"], [rec.get("value") for rec in records]))
    assert winners[0][1] == winners[1][1]
    assert {k: v for k, v in winners[0][0].items() if k != "fitSeconds"} == {
        k: v for k, v in winners[1][0].items() if k != "fitSeconds"
    }
    assert winners[0][0]["parameters"] == trial_parameters(
        spec(RANDOM).search,  # type: ignore[arg-type]
        11,
        winners[0][0]["index"],
    )


def test_the_trial_command_reports_its_record_as_a_pod_does(tmp_path: Path) -> None:
    spec_file = tmp_path / "tj.yaml"
    spec_file.write_text(yaml.safe_dump({"spec": spec().to_api()}))
    command = [*RUNTIME, "train", "--spec", str(spec_file), "--artifact-root", str(tmp_path),
               "--namespace", "ns", "--version", "1", "--trial"]  # fmt: skip
    env = {"JOB_COMPLETION_INDEX": "3", "MLKUBE_POD_NAME": "iris-trials-3-abcde"}
    run = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    assert run.returncode == 0, "a refused hyperparameter is a recorded trial, not a crash"
    record = json.loads(run.stdout)
    assert (record["index"], record["status"], record["pod"]) == (
        3,
        "Failed",
        "iris-trials-3-abcde",
    )


def test_another_namespaces_key_cannot_write_or_poison_a_namespaces_trials(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """With per-namespace keys (as object storage is set up), a pod of namespace B that is told
    to write A's trial records is refused by the server, and A's winner stays A's."""
    root = f"s3://{s3_server.bucket}/search-{uuid.uuid4().hex[:8]}"
    prefix = root.removeprefix(f"s3://{s3_server.bucket}/")
    key_a = s3_server.identity(f"search-a-{prefix[-8:]}", f"{prefix}/ns-a")
    key_b = s3_server.identity(f"search-b-{prefix[-8:]}", f"{prefix}/ns-b")
    spec_file = tmp_path / "tj.yaml"
    spec_file.write_text(yaml.safe_dump({"spec": spec().to_api()}))

    def trial(key: dict[str, str], namespace: str, index: int) -> subprocess.CompletedProcess[str]:
        command = [*RUNTIME, "train", "--spec", str(spec_file), "--artifact-root", root,
                   "--namespace", namespace, "--version", "1", "--trial", str(index),
                   "--result-file", str(tmp_path / "result.json")]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, env=key, check=False)

    for index in range(4):
        assert trial(key_a, "ns-a", index).returncode == 0
    poisoned = trial(key_b, "ns-a", 0)
    assert poisoned.returncode != 0, "B's key cannot write into A's trials"
    assert "ArtifactStoreError" in poisoned.stdout
    assert trial(key_b, "ns-b", 0).returncode == 0, "B's own trials go under B's prefix"

    command = [*RUNTIME, "train", "--spec", str(spec_file), "--artifact-root", root,
               "--namespace", "ns-a", "--version", "1"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=key_a, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["search"]["winner"]["index"] == 2
