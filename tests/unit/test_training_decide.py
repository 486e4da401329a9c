"""The TrainingJob reconciler's one decision: from what was observed to status, actions, Events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from mlkube.api.modelversion import ModelVersionSpec
from mlkube.api.trainingjob import ChampionGate, TrainingJobSpec, TrainingJobStatus
from mlkube.builders.common import Owner
from mlkube.builders.modelversion import model_version_manifest
from mlkube.builders.training import build_job
from mlkube.config import OperatorConfig
from mlkube.core.conditions import condition, timestamp
from mlkube.core.training import (
    POLL_SECONDS,
    Observation,
    checked_uris,
    decide,
    failed_reason,
    refused_spec,
    resolve_champion,
    retries_after_fix,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
JOB = "iris-train-train"
SPEC = TrainingJobSpec.model_validate(
    {"model": "iris", "dataset": {"uri": "builtin:iris"},
     "estimator": {"className": "sklearn.svm.SVC"}, "ttlSecondsAfterFinished": 60}
)  # fmt: skip
RESULT = {
    "status": "Succeeded", "version": 3, "task": "classification", "artifactUri": "s3://b/ns/iris/3",
    "sha256": "c" * 64, "metrics": {"accuracy": "0.96"}, "columns": [["a", "float"]],
}  # fmt: skip


def job(*conditions: str, suspend: bool = False, active: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": JOB},
        "spec": {"suspend": suspend},
        "status": {
            "active": active,
            "conditions": [{"type": t, "status": "True"} for t in conditions],
        },
    }


def finished_pod(result: dict[str, Any]) -> dict[str, Any]:
    state = {"terminated": {"exitCode": 0, "message": json.dumps(result)}}
    return {
        "metadata": {"creationTimestamp": "2026-11-27T11:59:00Z"},
        "status": {"containerStatuses": [{"name": "trainer", "state": state}]},
    }


def running(**update: Any) -> TrainingJobStatus:
    return TrainingJobStatus(
        phase="Running", version=3, job_name=JOB, observed_generation=1
    ).model_copy(update=update)


def test_a_new_trainingjob_creates_its_job_and_says_so_once() -> None:
    decision = decide(SPEC, TrainingJobStatus(), Observation(version=3), NOW, 1, JOB)
    assert decision.create_job
    assert (decision.status.phase, decision.status.version) == ("Pending", 3)
    assert decision.status.job_name == JOB
    assert [(e.type, e.reason) for e in decision.events] == [("Normal", "JobCreated")]
    assert decision.requeue_after == POLL_SECONDS


def test_what_cannot_train_fails_before_any_job_naming_the_field() -> None:
    for observation, reason in (
        (Observation(version=3, champion="qualityGates.champion: ModelVersion x does not exist"),
         "ChampionNotFound"),
        (Observation(version=3, forbidden="spec.dataset.uri: outside the namespace's store"),
         "ForbiddenURI"),
        (Observation(version=3, refused=("InvalidSpec", "Job iris-train-train: bad")),
         "InvalidSpec"),
    ):  # fmt: skip
        decision = decide(SPEC, TrainingJobStatus(), observation, NOW, 1, JOB)
        assert not decision.create_job
        assert (decision.status.phase, failed_reason(decision.status)) == ("Failed", reason)
        assert decision.status.job_name is None, "no Job was created"
        assert decision.status.version == 3, "the claimed version is kept for the retry"
        assert [(e.type, e.reason) for e in decision.events] == [("Warning", reason)]
        again = decide(SPEC, decision.status, observation, NOW, 1, JOB)
        assert again.events == [], "the same refusal is not announced twice"


def test_a_refused_trainingjob_trains_once_its_spec_changed_and_a_failed_run_never() -> None:
    refused = decide(
        SPEC, TrainingJobStatus(), Observation(version=3, forbidden="no"), NOW, 1, JOB
    ).status
    assert not retries_after_fix(refused, 1)
    assert retries_after_fix(refused, 2)
    assert decide(SPEC, refused, Observation(version=3), NOW, 2, JOB).create_job
    ran = running(phase="Failed")
    assert not retries_after_fix(ran, 2), "a Job ran: its end is final"
    assert not decide(SPEC, ran, Observation(version=3), NOW, 2, JOB).create_job


def test_suspend_is_forwarded_to_the_job() -> None:
    spec = SPEC.model_copy(update={"suspend": True})
    decision = decide(spec, running(), Observation(version=3, job=job(active=1)), NOW, 2, JOB)
    assert decision.suspend is True
    assert decision.status.phase == "Suspended"
    unchanged = decide(spec, running(), Observation(version=3, job=job(suspend=True)), NOW, 2, JOB)
    assert unchanged.suspend is None


def test_a_result_is_registered_and_named_in_status() -> None:
    observation = Observation(version=3, job=job("Complete"), pods=[finished_pod(RESULT)])
    decision = decide(SPEC, running(), observation, NOW, 1, JOB)
    assert decision.register == RESULT
    assert (decision.status.phase, decision.status.model_version) == ("Succeeded", "iris-v3")
    assert decision.status.metrics == {"accuracy": "0.96"}
    assert [(e.type, e.reason) for e in decision.events] == [("Normal", "Succeeded")]
    assert decision.requeue_after == 60, "the Job goes ttlSecondsAfterFinished from now"
    assert not decision.delete_job, "never in the pass that reads the result"


def test_a_schema_too_large_for_the_termination_message_fails_instead_of_registering() -> None:
    cut = {**RESULT, "columns": None, "schemaTruncated": True}
    observation = Observation(version=3, job=job("Complete"), pods=[finished_pod(cut)])
    decision = decide(SPEC, running(), observation, NOW, 1, JOB)
    assert decision.register is None
    assert (decision.status.phase, failed_reason(decision.status)) == ("Failed", "SchemaTooLarge")
    assert {c.type: c.status for c in decision.status.conditions}["Succeeded"] == "False"


def test_a_lost_job_ends_as_what_the_registry_shows() -> None:
    lost = decide(SPEC, running(), Observation(version=3, job_lost=True), NOW, 1, JOB)
    assert (lost.status.phase, failed_reason(lost.status)) == ("Failed", "JobLost")
    assert "version 3 stays unused" in lost.status.progress
    assert not lost.create_job, "never trained again under a new version"
    found = decide(
        SPEC, running(metrics={"accuracy": "0.9"}),
        Observation(version=3, job_lost=True, registered=True), NOW, 1, JOB,
    )  # fmt: skip
    assert (found.status.phase, found.status.model_version) == ("Succeeded", "iris-v3")
    assert found.status.metrics == {"accuracy": "0.9"}, "what status holds stays"


def test_a_finished_job_is_deleted_ttl_seconds_after_its_result_was_recorded() -> None:
    done = running(phase="Succeeded", completion_time=timestamp(NOW - timedelta(seconds=45)))
    waiting = decide(SPEC, done, Observation(version=3, job=job("Complete")), NOW, 1, JOB)
    assert (waiting.delete_job, waiting.requeue_after) == (False, 15)
    later = NOW + timedelta(seconds=15)
    assert decide(SPEC, done, Observation(version=3, job=job("Complete")), later, 1, JOB).delete_job
    gone = decide(SPEC, done, Observation(version=3), later, 1, JOB)
    assert (gone.delete_job, gone.requeue_after) == (False, None)
    kept = SPEC.model_copy(update={"ttl_seconds_after_finished": None})
    assert (
        decide(kept, done, Observation(version=3, job=job()), later, 1, JOB).requeue_after is None
    )


def test_the_champion_is_a_named_version_or_the_deployments_stable_one() -> None:
    version = {"spec": {"artifact": {"uri": "s3://b/ns/iris/1", "sha256": "a" * 64}}}
    named = ChampionGate(model_version="iris-v1")
    assert resolve_champion(named, None, version) == ("s3://b/ns/iris/1", "a" * 64)
    assert resolve_champion(named, None, None) == (
        "qualityGates.champion: ModelVersion iris-v1 does not exist"
    )
    serving = ChampionGate(deployment="iris")
    assert resolve_champion(serving, {"status": {}}, None) == (
        "qualityGates.champion: Deployment iris serves no version"
    )
    stable = {"status": {"stableVersion": "iris-v1"}}
    assert resolve_champion(serving, stable, version)[0] == "s3://b/ns/iris/1"


def test_every_uri_the_trainer_reads_is_checked_by_its_field() -> None:
    spec = TrainingJobSpec.model_validate(
        {**SPEC.to_api(), "dataset": {"uri": "s3://b/ns/d.csv", "inferenceLog": {
            "deployment": "iris", "appendOriginal": True, "feedbackUris": ["s3://b/ns/l.csv"]}}}
    )  # fmt: skip
    assert checked_uris(spec, ("s3://b/ns/iris/1", "a" * 64)) == {
        "spec.dataset.uri": "s3://b/ns/d.csv",
        "spec.qualityGates.champion.modelVersion": "s3://b/ns/iris/1",
        "spec.dataset.inferenceLog.feedbackUris[0]": "s3://b/ns/l.csv",
    }


TRACKED_RUN = {
    "trackingUri": "http://mlflow.team-a:5000", "experimentId": "3", "runId": "r" * 32,
    "runUrl": "http://mlflow.team-a:5000/#/experiments/3/runs/" + "r" * 32,
    "registeredModel": "iris", "registeredVersion": "7",
}  # fmt: skip


def test_a_tracked_run_lands_in_status_and_the_model_versions_lineage() -> None:
    result = {**RESULT, "tracking": TRACKED_RUN}
    observation = Observation(version=3, job=job("Complete"), pods=[finished_pod(result)])
    decision = decide(SPEC, running(), observation, NOW, 1, JOB)
    assert decision.status.tracking is not None
    assert decision.status.tracking.run_id == "r" * 32
    assert decision.status.tracking.registered_version == "7"
    tracked = condition(decision.status.conditions, "Tracked")
    assert tracked is not None
    assert (tracked.status, tracked.reason) == ("True", "RunLogged")
    assert decision.register is not None
    owner = Owner(kind="TrainingJob", name="iris-train", namespace="ns", uid="u")
    manifest = model_version_manifest(owner, SPEC, decision.register, "img", NOW)
    lineage = ModelVersionSpec.model_validate(manifest["spec"]).lineage
    assert lineage.mlflow == decision.status.tracking
    assert manifest["spec"]["lineage"]["mlflow"]["runUrl"] == TRACKED_RUN["runUrl"]


def test_an_untracked_run_that_was_not_required_warns_and_still_registers() -> None:
    why = (
        "tracking.mlflow: cannot start a run in experiment 'iris' at http://x:5000: cannot connect"
    )
    result = {**RESULT, "tracking": {"unavailable": why}}
    observation = Observation(version=3, job=job("Complete"), pods=[finished_pod(result)])
    decision = decide(SPEC, running(), observation, NOW, 1, JOB)
    assert decision.status.phase == "Succeeded"
    assert decision.register is not None
    assert decision.status.tracking is None
    tracked = condition(decision.status.conditions, "Tracked")
    assert tracked is not None
    assert (tracked.status, tracked.reason, tracked.message) == (
        "False", "TrackingUnavailable", why
    )  # fmt: skip
    assert ("Warning", "TrackingUnavailable") in [(e.type, e.reason) for e in decision.events]
    owner = Owner(kind="TrainingJob", name="iris-train", namespace="ns", uid="u")
    manifest = model_version_manifest(owner, SPEC, decision.register, "img", NOW)
    assert "mlflow" not in manifest["spec"]["lineage"]


def test_an_untracked_spec_has_no_tracked_condition() -> None:
    observation = Observation(version=3, job=job("Complete"), pods=[finished_pod(RESULT)])
    decision = decide(SPEC, running(), observation, NOW, 1, JOB)
    assert condition(decision.status.conditions, "Tracked") is None


def test_the_credentials_secret_is_mapped_to_mlflows_env_never_read_by_the_operator() -> None:
    spec = TrainingJobSpec.model_validate(
        {**SPEC.to_api(), "tracking": {"mlflow": {
            "trackingUri": "https://mlflow.example", "experiment": "iris",
            "credentialsSecret": "mlflow-team-a"}}}
    )  # fmt: skip
    owner = Owner(kind="TrainingJob", name="iris-train", namespace="ns", uid="u")
    env = build_job(owner, spec, 3, OperatorConfig())["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs == {
        "MLFLOW_TRACKING_USERNAME": {"name": "mlflow-team-a", "key": "username", "optional": True},
        "MLFLOW_TRACKING_PASSWORD": {"name": "mlflow-team-a", "key": "password", "optional": True},
        "MLFLOW_TRACKING_TOKEN": {"name": "mlflow-team-a", "key": "token", "optional": True},
    }
    assert not [e for e in build_job(owner, SPEC, 3, OperatorConfig())["spec"]["template"]["spec"][
        "containers"][0]["env"] if e["name"].startswith("MLFLOW_")]  # fmt: skip


def test_a_tracking_uri_must_be_http_or_https() -> None:
    for uri in ("file:///tmp/mlruns", "databricks", "sqlite:///m.db", "http://"):
        try:
            TrainingJobSpec.model_validate(
                {**SPEC.to_api(), "tracking": {"mlflow": {"trackingUri": uri, "experiment": "x"}}}
            )
        except ValueError as e:
            assert "trackingUri" in str(e)
        else:
            raise AssertionError(f"{uri} was accepted")


def test_a_spec_the_operator_refuses_fails_like_one_the_api_server_refused() -> None:
    """phase Failed, Failed=True InvalidSpec naming the field, as docs/operator.md says; it
    trains once the spec changes."""
    message = "spec.estimator.hyperparameters keys must be at most 256 characters"
    status = refused_spec(TrainingJobStatus(), message, 1, NOW)
    assert (status.phase, failed_reason(status)) == ("Failed", "InvalidSpec")
    assert [c.message for c in status.conditions if c.type == "Failed"] == [message]
    assert status.observed_generation == 1
    assert not retries_after_fix(status, 1)
    assert retries_after_fix(status, 2)
