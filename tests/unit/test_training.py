"""What a Job and its pods say about a training, and what gets registered."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mlkube.api.modelversion import ModelVersionSpec
from mlkube.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from mlkube.builders.common import Owner
from mlkube.builders.modelversion import model_version_manifest
from mlkube.core.training import (
    next_version,
    termination_result,
    training_outcome,
    training_status,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
RESULT = {
    "status": "Succeeded", "model": "iris", "version": 3, "task": "classification",
    "artifactUri": "file:///var/lib/mlkube/artifacts/ns/iris/3", "sha256": "c" * 64, "datasetDigest": "d" * 64,
    "metrics": {"accuracy": "0.96"}, "classes": ["0", "1", "2"], "columns": [["a", "float"], ["b", "string", True]],
    "files": {"schema.json": "e" * 64, "reference.parquet": "f" * 64},
    "framework": {"version": "1.9.1", "pythonVersion": "3.11.7"},
}  # fmt: skip
SPEC = TrainingJobSpec.model_validate(
    {
        "model": "iris",
        "dataset": {"uri": "builtin:iris"},
        "estimator": {"className": "sklearn.svm.SVC", "hyperparameters": {"C": 2}},
        "approvalPolicy": "AutoApproveOnGates",
    }
)


def job(*conditions: tuple[str, str], active: int = 0, suspend: bool = False) -> dict[str, Any]:
    return {
        "spec": {"suspend": suspend},
        "status": {
            "active": active,
            "conditions": [{"type": t, "status": "True", "reason": r} for t, r in conditions],
        },
    }


def pod(state: dict[str, Any], created: str = "2026-11-27T12:00:00Z") -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": created},
        "status": {"containerStatuses": [{"name": "trainer", "state": state}]},
    }


def terminated(result: dict[str, Any]) -> dict[str, Any]:
    return pod({"terminated": {"exitCode": 0, "message": json.dumps(result)}})


def test_versions_are_never_reused() -> None:
    assert next_version([]) == 1
    assert next_version([1, 4, 2]) == 5


def test_completed_job_with_a_result_succeeded() -> None:
    outcome = training_outcome(job(("Complete", "")), [terminated(RESULT)])
    assert outcome.phase == "Succeeded"
    assert outcome.result["sha256"] == "c" * 64


def test_the_trainers_reason_wins_over_the_jobs() -> None:
    failure = {
        "status": "Failed",
        "reason": "DatasetNotFound",
        "message": "dataset.uri: cannot read x",
    }
    outcome = training_outcome(job(("Failed", "PodFailurePolicy")), [terminated(failure)])
    assert (outcome.phase, outcome.reason) == ("Failed", "DatasetNotFound")
    assert "cannot read x" in outcome.message


def test_job_failure_reasons_are_kept() -> None:
    assert training_outcome(job(("Failed", "DeadlineExceeded")), []).reason == "DeadlineExceeded"
    assert (
        training_outcome(job(("Failed", "BackoffLimitExceeded")), []).reason
        == "BackoffLimitExceeded"
    )


def test_the_newest_pod_reports() -> None:
    old = pod(
        {"terminated": {"message": json.dumps({"status": "Failed", "reason": "TrainingFailed"})}},
        "2026-11-27T11:00:00Z",
    )
    new = pod({"terminated": {"message": json.dumps(RESULT)}}, "2026-11-27T11:05:00Z")
    assert training_outcome(job(("Complete", "")), [old, new]).phase == "Succeeded"


def test_image_pull_failure_is_reported_while_the_job_waits() -> None:
    waiting = pod({"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}})
    outcome = training_outcome(job(active=1), [waiting])
    assert (outcome.phase, outcome.reason) == ("Failed", "ImagePullFailed")


def test_a_missing_secret_keeps_the_training_pending_with_the_kubelets_reason() -> None:
    waiting = pod(
        {
            "waiting": {
                "reason": "CreateContainerConfigError",
                "message": 'secret "mlkube-s3" not found',
            }
        }
    )
    outcome = training_outcome(job(active=1), [waiting])
    assert (outcome.phase, outcome.reason) == ("Pending", "CreateContainerConfigError")
    assert outcome.message == 'the trainer pod cannot start: secret "mlkube-s3" not found'


def test_running_suspended_and_pending() -> None:
    assert training_outcome(None, []).phase == "Pending"
    assert training_outcome(job(active=1), [pod({"running": {}})]).phase == "Running"
    assert training_outcome(job(suspend=True), []).phase == "Suspended"
    assert training_outcome(job(), []).phase == "Pending"


def test_a_log_tail_instead_of_json_is_kept_as_the_message() -> None:
    crashed = pod({"terminated": {"exitCode": 137, "message": "Killed: out of memory"}})
    outcome = training_outcome(job(("Failed", "BackoffLimitExceeded")), [crashed])
    assert (outcome.reason, outcome.message) == ("TrainingFailed", "Killed: out of memory")


def test_status_conditions_follow_the_outcome() -> None:
    running = training_status(TrainingJobStatus(), training_outcome(job(active=1), []), 2, NOW)
    assert running.phase == "Running"
    assert running.start_time == "2026-11-27T12:00:00Z"
    types = {c.type: c.status for c in running.conditions}
    assert types == {"Running": "True", "Succeeded": "Unknown", "Failed": "False"}
    done = training_status(
        running, training_outcome(job(("Complete", "")), [terminated(RESULT)]), 2, NOW
    )
    assert {c.type: c.status for c in done.conditions} == {
        "Running": "False",
        "Succeeded": "True",
        "Failed": "False",
    }
    assert done.metrics == {"accuracy": "0.96"}
    assert done.observed_generation == 2


def test_registered_version_carries_lineage_and_no_owner() -> None:
    owner = Owner(kind="TrainingJob", name="iris-train", namespace="ns", uid="u")
    manifest = model_version_manifest(owner, SPEC, RESULT, "localhost/mlkube-runtime:0.1.0", NOW)
    assert manifest["metadata"]["name"] == "iris-v3"
    assert "ownerReferences" not in manifest["metadata"], (
        "deleting a TrainingJob keeps its versions"
    )
    spec = ModelVersionSpec.model_validate(manifest["spec"])
    assert spec.lineage.training_job == "iris-train"
    assert spec.lineage.params == {"C": 2}
    assert spec.lineage.dataset_digest == "d" * 64
    assert spec.input_schema[1].type == "string"
    assert [c.nullable for c in spec.input_schema] == [False, True]
    assert spec.artifact.files == {"schema.json": "e" * 64, "reference.parquet": "f" * 64}
    assert spec.approval is not None
    assert spec.approval.by == "policy:AutoApproveOnGates"
    assert (
        spec.reference_sample_uri == "file:///var/lib/mlkube/artifacts/ns/iris/3/reference.parquet"
    )
    manual = model_version_manifest(
        owner, SPEC.model_copy(update={"approval_policy": "Manual"}), RESULT, "img", NOW
    )
    assert "approval" not in manual["spec"]


def test_a_version_trained_on_production_data_names_the_log_window_in_lineage() -> None:
    owner = Owner(kind="TrainingJob", name="iris-retrain-1", namespace="ns", uid="u")
    production = TrainingJobSpec.model_validate(
        {**SPEC.to_api(), "dataset": {"inferenceLog": {"deployment": "iris", "rows": 5000}}}
    )
    window = {
        "deployment": "iris", "modelVersions": ["iris-v1", "iris-v2"], "rows": 4200,
        "first": "2026-11-26T12:00:00Z", "last": "2026-11-27T11:59:00Z",
        "feedbackFiles": ["s3://ml/ns/labels/2026-11-27.csv"],
    }  # fmt: skip
    manifest = model_version_manifest(
        owner, production, {**RESULT, "inferenceLog": window}, "img", NOW
    )
    lineage = ModelVersionSpec.model_validate(manifest["spec"]).lineage
    assert lineage.dataset_uri == "inferenceLog:iris?rows=5000"
    assert lineage.inference_log is not None
    assert lineage.inference_log.model_versions == ["iris-v1", "iris-v2"]
    assert lineage.inference_log.feedback_files == ["s3://ml/ns/labels/2026-11-27.csv"]
    assert lineage.inference_log.rows == 4200


def test_results_are_read_from_the_named_container() -> None:
    drift_pod = {
        "metadata": {"creationTimestamp": "2026-11-27T12:00:00Z"},
        "status": {
            "containerStatuses": [
                {"name": "drift", "state": {"terminated": {"message": '{"verdict": "NoDrift"}'}}}
            ]
        },
    }
    assert termination_result([drift_pod]) is None
    assert termination_result([drift_pod], "drift") == {"verdict": "NoDrift"}
