"""BatchPrediction: the pure decisions (which step runs, what the Jobs mean, what status says)
and the three Jobs' manifests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlkube.api.batchprediction import (
    MAX_FAILED_SHARDS,
    BatchPredictionSpec,
    BatchPredictionStatus,
    ShardCounts,
    ShardFailure,
)
from mlkube.builders.batch import (
    WORKER,
    Scoring,
    build_manifest_job,
    build_plan_job,
    build_shards_job,
    job_name,
)
from mlkube.builders.common import Owner
from mlkube.config import OperatorConfig
from mlkube.core.batch import (
    Decision,
    Observation,
    Target,
    decide,
    describe_failures,
    failure_summary,
    parse_indexes,
    shard_rows,
    unread_failures,
)
from mlkube.core.conditions import condition

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SPEC = BatchPredictionSpec.model_validate(
    {
        "model": "churn",
        "latestApproved": True,
        "input": {"uri": "s3://models/prod/team-a/scoring/"},
        "output": {"uri": "s3://models/prod/team-a/scores/", "idColumn": "customer_id"},
        "rowsPerShard": 1000,
        "parallelism": 2,
        "activeDeadlineSeconds": 600,
    }
)
TARGET = Target("churn-v3", "s3://models/prod/team-a/churn/3", "a" * 64)
OWNER = Owner(kind="BatchPrediction", name="scores", namespace="team-a", uid="uid-7")
CONFIG = OperatorConfig(runtime_image="localhost/mlkube-runtime:0.1.0")


def finished(kind: str = "Complete", reason: str | None = None, **status: Any) -> dict[str, Any]:
    return {
        "status": {**status, "conditions": [{"type": kind, "status": "True", "reason": reason}]}
    }


def running(**status: Any) -> dict[str, Any]:
    return {"spec": {"parallelism": 2, "completions": 4}, "status": status}


def step(status: BatchPredictionStatus, at: datetime = NOW, **observed: Any) -> Decision:
    return decide(SPEC, status, Observation(**observed), at, 1)


def planned() -> BatchPredictionStatus:
    """A run whose plan found 3,500 rows: 4 shards."""
    planning = step(BatchPredictionStatus(), target=TARGET).status
    result = {"status": "Planned", "rows": 3500, "shards": 4, "files": 2}
    return step(planning, plan_job=finished(), plan_result=result).status


# -- decisions ------------------------------------------------------------------------------------


def test_a_run_pins_its_version_and_plans_first() -> None:
    decision = step(BatchPredictionStatus(), target=TARGET)
    assert decision.create == "plan"
    s = decision.status
    assert (s.phase, s.model_version, s.model_sha256) == ("Planning", "churn-v3", "a" * 64)
    assert s.start_time == "2026-11-27T12:00:00Z"
    later = step(s, target=Target("churn-v4", "s3://x", "b" * 64), plan_job=running(active=1))
    assert later.status.model_version == "churn-v3", "a version approved mid-run never mixes in"
    assert later.create is None, "a plan under way is not started again"


def test_without_a_version_to_score_with_it_waits_and_says_why() -> None:
    problem = ("NotApproved", "ModelVersion churn-v3 is not approved; run `mlkube approve`")
    decision = step(BatchPredictionStatus(), target_problem=problem)
    assert (decision.status.phase, decision.create, decision.requeue_after) == ("Pending", None, 30)
    succeeded = condition(decision.status.conditions, "Succeeded")
    assert succeeded is not None
    assert (succeeded.status, succeeded.reason) == ("Unknown", "NotApproved")
    assert decision.status.start_time is None, "the deadline counts from the run's start"


def test_the_plan_result_sizes_the_shards_job() -> None:
    planning = step(BatchPredictionStatus(), target=TARGET).status
    result = {"status": "Planned", "rows": 3500, "shards": 4, "files": 2}
    decision = step(planning, plan_job=finished(), plan_result=result)
    assert decision.create == "shards"
    s = decision.status
    assert (s.phase, s.rows, s.shards.total) == ("Running", 3500, 4)
    assert [e.message for e in decision.events] == [
        "3,500 rows in 2 files: 4 shards of up to 1,000 rows"
    ]


def test_a_plan_failure_ends_the_run_with_the_workers_reason() -> None:
    planning = step(BatchPredictionStatus(), target=TARGET).status
    refused = {"status": "Failed", "reason": "OutputInUse", "message": "spec.output.uri: ..."}
    decision = step(planning, plan_job=finished("Failed"), plan_result=refused)
    failed = condition(decision.status.conditions, "Failed")
    assert (decision.status.phase, failed and failed.reason) == ("Failed", "OutputInUse")
    assert decision.requeue_after is None
    assert [e.type for e in decision.events] == ["Warning"]
    silent = step(planning, plan_job=finished("Failed", "DeadlineExceeded"))
    assert condition(silent.status.conditions, "Failed").reason == "DeadlineExceeded"  # type: ignore[union-attr]


def test_progress_counts_shards_and_rows_from_the_indexed_jobs_status() -> None:
    s = planned()
    decision = step(s, shards_job=running(completedIndexes="0,2-3", active=1, ready=1))
    assert (decision.status.shards.succeeded, decision.status.shards.failed) == (3, 0)
    assert decision.status.rows_scored == 1000 + 1000 + 500, "the last shard holds what is left"
    assert decision.status.progress == "3 of 4 shards done; 2,500 of 3,500 rows scored"
    assert decision.create is None


def test_a_failed_shard_is_named_with_its_reason_and_the_others_go_on() -> None:
    s = planned()
    why = ("InputSchemaMismatch", "b.csv: column 'age' must be float, got string 'x' in row 7")
    decision = step(
        s,
        shards_job=running(completedIndexes="0", failedIndexes="2", active=2),
        shard_failures={2: why},
    )
    assert decision.status.phase == "Running"
    assert decision.status.failed_shards == [ShardFailure(shard=2, reason=why[0], message=why[1])]
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "ShardFailed")]
    ended = step(
        decision.status,
        shards_job=finished("Failed", "FailedIndexes", completedIndexes="0-1,3", failedIndexes="2"),
    )
    assert (ended.status.phase, ended.create) == ("Finalizing", "manifest")
    assert ended.events == [], "each shard's failure is said once"
    manifest = {"status": "Written", "uri": "s3://.../_manifest.json", "rowsOut": 2500}
    final = step(
        ended.status,
        shards_job=finished("Failed", "FailedIndexes", completedIndexes="0-1,3", failedIndexes="2"),
        manifest_job=finished(),
        manifest_result=manifest,
    )
    failed = condition(final.status.conditions, "Failed")
    assert final.status.phase == "Failed" and failed is not None
    assert failed.reason == "ShardsFailed"
    assert failed.message == (
        "1 of 4 shards failed (the other 3 shards' parts are complete): shard 2: "
        "InputSchemaMismatch: "
        "b.csv: column 'age' must be float, got string 'x' in row 7"
    )
    assert final.status.manifest_uri == "s3://.../_manifest.json"


def summary(total: int, done: int, failed: int, named: list[int]) -> str:
    why = "b.parquet: the model's input column 'age' is not in the file"
    return failure_summary(
        BatchPredictionStatus(
            shards=ShardCounts(total=total, succeeded=done, failed=failed),
            failed_shards=[ShardFailure(shard=i, reason="InputSchemaMismatch", message=why)
                           for i in named],
        )
    )  # fmt: skip


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ((3, 0, 3, [0, 1, 2]),
         "all 3 shards failed: shard 0: InputSchemaMismatch: b.parquet: the model's input column "
         "'age' is not in the file; also shards 1, 2"),
        ((1, 0, 1, [0]), "the run's only shard failed: shard 0: InputSchemaMismatch: b.parquet: "
         "the model's input column 'age' is not in the file"),
        ((2, 1, 1, [1]), "1 of 2 shards failed (the other shard's part is complete): shard 1: "
         "InputSchemaMismatch: b.parquet: the model's input column 'age' is not in the file"),
        ((40, 10, 20, list(range(16))), "10 of 40 shards done, 20 failed, 10 never finished: "
         "shard 0: InputSchemaMismatch: b.parquet: the model's input column 'age' is not in the "
         "file; also shards 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 and 4 more"),
        ((4, 3, 0, []), "3 of 4 shards done, 1 never finished"),
    ],
    ids=["all failed", "the only shard", "one other done", "some never finished", "none failed"],
)  # fmt: skip
def test_the_failure_summary_says_what_is_true_of_the_other_shards(
    counts: tuple[int, int, int, list[int]], message: str
) -> None:
    assert summary(*counts) == message


def test_every_shard_done_and_the_manifest_written_is_success() -> None:
    s = step(planned(), shards_job=finished(completedIndexes="0-3")).status
    assert s.phase == "Finalizing"
    manifest = {"status": "Written", "uri": "s3://m/_manifest.json", "rowsOut": 3500}
    decision = step(s, shards_job=finished(completedIndexes="0-3"), manifest_job=finished(),
                    manifest_result=manifest)  # fmt: skip
    assert (decision.status.phase, decision.status.rows_scored) == ("Succeeded", 3500)
    assert decision.status.completion_time == "2026-11-27T12:00:00Z"
    assert [e.reason for e in decision.events] == ["Succeeded"]
    assert decision.requeue_after is None


def test_a_deadline_that_passed_mid_run_still_writes_the_manifest_then_fails() -> None:
    s = planned()
    late = finished("Failed", "DeadlineExceeded", completedIndexes="0-1")
    ended = step(s, shards_job=late)
    assert ended.create == "manifest", "the shards done are named"
    final = step(ended.status, shards_job=late, manifest_job=finished(),
                 manifest_result={"status": "Written", "uri": "u", "rowsOut": 2000})  # fmt: skip
    assert condition(final.status.conditions, "Failed").reason == "DeadlineExceeded"  # type: ignore[union-attr]


def test_no_step_starts_once_the_deadline_passed() -> None:
    planning = step(BatchPredictionStatus(), target=TARGET).status
    late = NOW + timedelta(seconds=601)
    decision = step(planning, at=late, plan_job=finished(),
                    plan_result={"status": "Planned", "rows": 10, "shards": 1})  # fmt: skip
    assert (decision.status.phase, decision.create) == ("Failed", None)


def test_a_forbidden_uri_ends_the_run_before_anything_starts() -> None:
    message = "spec.input.uri: s3://models/prod/team-b/x is outside this namespace's store"
    decision = step(BatchPredictionStatus(), target=TARGET, forbidden=message)
    assert (decision.status.phase, decision.create) == ("Failed", None)
    assert condition(decision.status.conditions, "Failed").message == message  # type: ignore[union-attr]


def test_a_parallelism_change_is_forwarded_and_an_image_that_cannot_be_pulled_fails() -> None:
    s = planned()
    spec = SPEC.model_copy(update={"parallelism": 3})
    decision = decide(spec, s, Observation(shards_job=running(active=2, ready=2)), NOW, 2)
    assert decision.parallelism == 3
    more = SPEC.model_copy(update={"parallelism": 50})
    assert decide(more, s, Observation(shards_job=running(active=2)), NOW, 2).parallelism == 4
    stuck = step(s, shards_job=running(active=2), pod_problem=("ImagePullFailed", "ErrImagePull"))
    assert stuck.status.phase == "Failed"
    waiting = step(s, shards_job=running(active=2), pod_problem=("Unschedulable", "0/1 nodes"))
    assert waiting.status.phase == "Running"
    assert waiting.status.progress.endswith("a shard's pod cannot start: 0/1 nodes")  # type: ignore[union-attr]


def test_a_finished_run_is_left_alone() -> None:
    done = step(planned(), forbidden="x").status
    assert step(done, target=TARGET).status == done


def test_failed_shards_are_read_once_and_at_most_the_bound() -> None:
    job = {"status": {"failedIndexes": "0-40"}}
    s = BatchPredictionStatus(failed_shards=[ShardFailure(shard=3, reason="R")])
    assert unread_failures(s, job) == [0, 1, 2, *range(4, MAX_FAILED_SHARDS)], "16 in all"
    assert unread_failures(s, None) == []


def test_index_ranges_and_shard_rows() -> None:
    assert parse_indexes("1,3-5,9") == {1, 3, 4, 5, 9}
    assert parse_indexes("") == set() and parse_indexes(None) == set()
    assert [shard_rows(2500, 1000, i) for i in range(4)] == [1000, 1000, 500, 0]


def test_a_failed_shard_is_described_from_its_newest_pod() -> None:
    def pod(index: int, created: str, terminated: dict[str, Any]) -> dict[str, Any]:
        return {
            "metadata": {
                "creationTimestamp": created,
                "labels": {"batch.kubernetes.io/job-completion-index": str(index)},
            },
            "status": {
                "containerStatuses": [{"name": WORKER, "state": {"terminated": terminated}}]
            },
        }

    schema = '{"status":"Failed","reason":"InputSchemaMismatch","message":"row 7"}'
    pods = [
        pod(2, "2026-11-27T12:00:00Z", {"exitCode": 1, "message": "old attempt"}),
        pod(2, "2026-11-27T12:01:00Z", {"exitCode": 3, "message": schema}),
        pod(5, "2026-11-27T12:01:00Z", {"exitCode": 137, "reason": "OOMKilled"}),
    ]
    assert describe_failures(pods, WORKER) == {
        2: ("InputSchemaMismatch", "row 7"),
        5: ("ShardFailed", "the shard's pod failed (exit code 137, OOMKilled)"),
    }


# -- manifests ------------------------------------------------------------------------------------


SCORING = Scoring("churn-v3", "s3://models/prod/team-a/churn/3", "a" * 64)


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_the_shards_job_is_indexed_with_a_retry_budget_per_shard() -> None:
    job = build_shards_job(OWNER, SPEC, SCORING, 4, CONFIG, 500)
    assert job == build_shards_job(OWNER, SPEC, SCORING, 4, CONFIG, 500), "deterministic"
    assert job["metadata"]["name"] == job_name("scores", "shards") == "scores-shards"
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("BatchPrediction", "uid-7", True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 2)
    assert (spec["backoffLimitPerIndex"], spec["activeDeadlineSeconds"]) == (2, 500)
    assert "backoffLimit" not in spec, "per index only: a bad shard never restarts good ones"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailIndex",
        "onExitCodes": {"containerName": WORKER, "operator": "In", "values": [3]},
    }, "a schema error fails its shard for good"
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_a_shard_pod_knows_its_model_its_spec_and_its_attempt() -> None:
    c = container(build_shards_job(OWNER, SPEC, SCORING, 4, CONFIG, 500))
    assert c["args"][:6] == ["batch", "shard", "--spec", "env:MLKUBE_SPEC", "--run-id", "uid-7"]
    assert c["args"][6:] == [
        "--model-version", "churn-v3", "--model-uri", SCORING.uri, "--sha256", "a" * 64,
    ]  # fmt: skip
    env = {e["name"]: e for e in c["env"]}
    assert '"parallelism"' not in env["MLKUBE_SPEC"]["value"], "the template never changes"
    assert env["MLKUBE_BATCHPREDICTION"]["value"] == "scores"
    assert env["MLKUBE_INDEX_FAILURES"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-index-failure-count']"
    )
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}}


def test_every_step_runs_a_locked_down_pod_without_a_token() -> None:
    jobs = [
        build_plan_job(OWNER, SPEC, CONFIG, 600),
        build_shards_job(OWNER, SPEC, SCORING, 4, CONFIG, 600),
        build_manifest_job(OWNER, SPEC, SCORING, CONFIG),
    ]
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container(job)["securityContext"]["readOnlyRootFilesystem"] is True
        assert job["metadata"]["labels"]["mlkube.io/batchprediction"] == "scores"
        assert container(job)["image"] == CONFIG.runtime_image
    assert [container(j)["args"][1] for j in jobs] == ["plan", "shard", "manifest"]
    assert jobs[0]["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"


def test_the_plan_pod_reads_the_pinned_versions_schema() -> None:
    """It checks every input file holds the model's columns before any shard starts."""
    args = container(build_plan_job(OWNER, SPEC, CONFIG, 600, SCORING.uri))["args"]
    assert args[1] == "plan" and args[-2:] == ["--model-uri", SCORING.uri]
    assert "--model-uri" not in container(build_plan_job(OWNER, SPEC, CONFIG, 600))["args"]


@pytest.mark.parametrize("left", [0, -30])
def test_a_step_never_gets_a_deadline_below_one_second(left: int) -> None:
    assert build_plan_job(OWNER, SPEC, CONFIG, left)["spec"]["activeDeadlineSeconds"] == 1


def test_pods_are_read_only_while_none_is_ready_and_only_of_shards_still_open() -> None:
    from mlkube.controller.batchprediction import _waiting_indexes

    job = {"spec": {"completions": 20}, "status": {"active": 2, "completedIndexes": "0-3,5"}}
    assert _waiting_indexes(job) == "4,6,7,8,9,10,11,12", "at most 8, the lowest first"
    assert _waiting_indexes({**job, "status": {**job["status"], "ready": 1}}) == ""
    assert _waiting_indexes({"spec": {"completions": 4}, "status": {}}) == "", "no pods yet"
