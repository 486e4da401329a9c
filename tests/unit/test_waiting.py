"""Why a workload's pods are not running, in Kubernetes' own words: one function for trainings,
verifications, model servers and drift runs (`core.waiting`), fed with bodies as the API server
returns them."""

from __future__ import annotations

from typing import Any

from mlkube.core.training import training_outcome
from mlkube.core.waiting import why_not_running

QUOTA = (
    'Error creating: pods "iris-train-x7k2p" is forbidden: exceeded quota: q, '
    "requested: pods=1, used: pods=0, limited: pods=0"
)
UNSCHEDULABLE = (
    "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
    "1 No preemption victims found for incoming pod."
)


def job(*conditions: tuple[str, str, str], uid: str = "u1") -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "iris-train", "uid": uid},
        "spec": {},
        "status": {
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions
            ]
        },
    }


def pod(
    waiting: dict[str, Any] | None = None,
    scheduled: dict[str, Any] | None = None,
    created: str = "2026-12-01T10:00:00Z",
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending", "conditions": []}
    if scheduled is not None:
        status["conditions"].append({"type": "PodScheduled", **scheduled})
    if waiting is not None:
        container: dict[str, Any] = {"name": "trainer", "state": {"waiting": waiting}}
        if last is not None:
            container["lastState"] = {"terminated": last}
        status["containerStatuses"] = [container]
    return {"metadata": {"name": "p", "creationTimestamp": created}, "status": status}


def failed_create(at: str, message: str = QUOTA) -> dict[str, Any]:
    return {
        "type": "Warning",
        "reason": "FailedCreate",
        "message": message,
        "lastTimestamp": at,
        "metadata": {"creationTimestamp": at},
    }


def test_a_quota_that_refuses_the_pods_is_named_from_the_jobs_event() -> None:
    assert why_not_running(job(), [], [failed_create("2026-12-01T10:00:05Z")]) == (
        "FailedCreate",
        QUOTA,
    )


def test_the_newest_refusal_speaks_and_one_older_than_a_pod_was_overcome() -> None:
    older = failed_create("2026-12-01T09:00:00Z", "old words")
    newer = failed_create("2026-12-01T09:30:00Z")
    assert why_not_running(job(), [], [newer, older]) == ("FailedCreate", QUOTA)
    running = pod(created="2026-12-01T09:45:00Z")
    assert why_not_running(job(), [running], [newer, older]) is None


def test_an_unschedulable_pod_gives_the_schedulers_words() -> None:
    stuck = pod(scheduled={"status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE})
    assert why_not_running(job(), [stuck]) == ("Unschedulable", UNSCHEDULABLE)
    placed = pod(scheduled={"status": "True"})
    assert why_not_running(job(), [placed]) is None


def test_an_image_that_cannot_be_pulled_is_one_reason_whatever_the_kubelet_calls_it() -> None:
    for reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        stuck = pod({"reason": reason, "message": 'image "nope:1" not found'})
        assert why_not_running(job(), [stuck]) == (
            "ImagePullFailed",
            f'{reason}: image "nope:1" not found',
        )


def test_a_container_the_kubelet_cannot_configure_or_keep_running_keeps_its_reason() -> None:
    config = pod({"reason": "CreateContainerConfigError", "message": 'secret "s3" not found'})
    assert why_not_running(job(), [config]) == (
        "CreateContainerConfigError",
        'secret "s3" not found',
    )
    crashing = pod(
        {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"},
        last={"exitCode": 1, "reason": "Error", "message": "ValueError: no model.joblib"},
    )
    reason, message = why_not_running(None, [crashing]) or ("", "")
    assert reason == "CrashLoopBackOff"
    assert "last exit code 1: ValueError: no model.joblib" in message


def test_a_pod_still_being_created_says_nothing() -> None:
    assert why_not_running(job(), [pod({"reason": "ContainerCreating"})]) is None
    assert why_not_running(job(), []) is None
    assert why_not_running(None, []) is None


def test_a_container_problem_is_named_before_a_siblings_scheduling() -> None:
    pulling = pod(
        {"reason": "ErrImagePull", "message": "not found"}, created="2026-12-01T10:00:00Z"
    )
    pending = pod(
        scheduled={"status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE},
        created="2026-12-01T10:01:00Z",
    )
    assert why_not_running(job(), [pending, pulling])[0] == "ImagePullFailed"  # type: ignore[index]


def test_a_deployment_whose_replicas_are_refused_reports_its_replica_failure() -> None:
    server = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iris-iris-v1"},
        "status": {
            "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "iris-iris-v1-5d9f" is forbidden: exceeded quota: q',
                },
            ]
        },
    }
    assert why_not_running(server, []) == (
        "FailedCreate",
        'pods "iris-iris-v1-5d9f" is forbidden: exceeded quota: q',
    )


def test_a_job_past_its_deadline_says_so_and_what_held_it() -> None:
    expired = job(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"))
    assert why_not_running(expired, [], [failed_create("2026-12-01T10:00:05Z")]) == (
        "DeadlineExceeded",
        f"Job was active longer than specified deadline (FailedCreate: {QUOTA})",
    )
    assert why_not_running(expired, []) == (
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )


def test_a_training_refused_by_a_quota_stays_pending_with_the_quotas_words() -> None:
    outcome = training_outcome(job(), [], [failed_create("2026-12-01T10:00:05Z")])
    assert (outcome.phase, outcome.reason) == ("Pending", "FailedCreate")
    assert outcome.message == f"the trainer pod cannot start: {QUOTA}"


def test_a_suspended_training_reads_no_old_refusal() -> None:
    suspended = job(("Suspended", "JobSuspended", "Job suspended"))
    outcome = training_outcome(suspended, [], [failed_create("2026-12-01T10:00:05Z")])
    assert outcome.phase == "Suspended"


def test_messages_are_bounded() -> None:
    long = failed_create("2026-12-01T10:00:05Z", "x" * 5000)
    assert len(why_not_running(job(), [], [long])[1]) == 1024  # type: ignore[index]


def test_a_training_past_its_deadline_says_what_held_its_pod() -> None:
    expired = job(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"))
    outcome = training_outcome(expired, [], [failed_create("2026-12-01T10:00:05Z")])
    assert (outcome.phase, outcome.reason) == ("Failed", "DeadlineExceeded")
    assert outcome.message == (
        f"Job was active longer than specified deadline (FailedCreate: {QUOTA})"
    )
