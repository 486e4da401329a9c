"""Why a workload's pods are not running: one answer, in Kubernetes' own words, for every owner
that waits on pods (a training, a verification, a model server, a drift run).

Pure: the controller observes and passes in the workload (a batch/v1 Job or an apps/v1
Deployment, as the API server returns them), its pods, and the Events about the workload; the
answer is a (reason, message) pair for a condition. Kubernetes says why in four places, and this
is the one function that reads them all:

- a container the kubelet cannot start: its `state.waiting` (`ErrImagePull`, `ImagePullBackOff`,
  `CreateContainerConfigError`, `CrashLoopBackOff`, ...), as `kubectl get pods` shows it;
- a pod the scheduler cannot place: its condition `PodScheduled=False`, reason `Unschedulable`;
- pods the API server refused to create (a ResourceQuota, a LimitRange, Pod Security admission):
  an apps/v1 Deployment's condition `ReplicaFailure` (reason `FailedCreate`), or for a Job, which
  has no such condition, its `FailedCreate` Warning Event;
- a Job that ended without a result: its `Failed` condition (`DeadlineExceeded` after
  `activeDeadlineSeconds`, `BackoffLimitExceeded`), with what kept its pods from running before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlkube.api.common import Body

Problem = tuple[str, str]
"""(reason, message) for a condition: CamelCase reason, Kubernetes' own words."""

IMAGE_PULL_FAILURES = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
"""Waiting reasons of a container whose image cannot be had (reported as `ImagePullFailed`)."""
CONTAINER_FAILURES = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"}
)
"""Waiting reasons of a container the kubelet cannot start or keep running (reported as is)."""
IMAGE_PULL_FAILED = "ImagePullFailed"
MESSAGE_LIMIT = 1024
"""Characters of Kubernetes' words kept in a message (a condition's message is bounded)."""


def _true(body: Body | None, type_: str) -> Body | None:
    conditions = ((body or {}).get("status") or {}).get("conditions") or []
    return next(
        (c for c in conditions if c.get("type") == type_ and c.get("status") == "True"), None
    )


def _created(body: Body) -> str:
    return str((body.get("metadata") or {}).get("creationTimestamp") or "")


def _event_time(event: Body) -> str:
    """When an Event last happened (RFC 3339 strings compare in time order)."""
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or _created(event)
    )


def _words(reason: str, message: Any) -> str:
    text = str(message or "").strip()
    return (f"{reason}: {text}" if text else reason)[:MESSAGE_LIMIT]


def container_problem(pod: Body) -> Problem | None:
    """A container of `pod` (init containers first) that cannot start, or None."""
    status = pod.get("status") or {}
    for container in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if reason in IMAGE_PULL_FAILURES:
            return IMAGE_PULL_FAILED, _words(reason, waiting.get("message"))
        if reason in CONTAINER_FAILURES:
            message = str(waiting.get("message") or "")
            last = (container.get("lastState") or {}).get("terminated") or {}
            if reason == "CrashLoopBackOff" and last:
                said = str(last.get("message") or last.get("reason") or "").strip()[-256:]
                message = f"{message} (last exit code {last.get('exitCode')}: {said})".strip()
            return reason, message[:MESSAGE_LIMIT]
    return None


def unschedulable(pod: Body) -> Problem | None:
    """The scheduler's words for a pod it cannot place, or None."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    scheduled: Body = next((c for c in conditions if c.get("type") == "PodScheduled"), {})
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return "Unschedulable", str(scheduled.get("message") or "")[:MESSAGE_LIMIT]
    return None


def refused_pods(
    workload: Body | None, pods: Sequence[Body], events: Sequence[Body]
) -> Problem | None:
    """Why the API server refused the workload's pods: an apps/v1 Deployment's (or ReplicaSet's)
    `ReplicaFailure` condition, else the newest `FailedCreate` Event about it that is newer than
    every pod (an older one was overcome: a pod was created since)."""
    failure = _true(workload, "ReplicaFailure")
    if failure is not None:
        reason = str(failure.get("reason") or "FailedCreate")
        return reason, str(failure.get("message") or "")[:MESSAGE_LIMIT]
    newest_pod = max((_created(p) for p in pods), default="")
    refusals = [
        e for e in events if e.get("reason") == "FailedCreate" and _event_time(e) >= newest_pod
    ]
    if not refusals:
        return None
    event = max(refusals, key=_event_time)
    return "FailedCreate", str(event.get("message") or "")[:MESSAGE_LIMIT]


def blocked(
    workload: Body | None, pods: Sequence[Body], events: Sequence[Body] = ()
) -> Problem | None:
    """Why the workload's pods are not running now: a container that cannot start, a pod that
    cannot be placed, pods that could not be created; None when nothing says so (yet)."""
    newest_first = sorted(pods, key=_created, reverse=True)
    for check in (container_problem, unschedulable):
        for pod in newest_first:
            problem = check(pod)
            if problem is not None:
                return problem
    return refused_pods(workload, pods, events)


def job_failure(job: Body | None) -> Problem | None:
    """A Job's `Failed` condition as (reason, message), or None while it has not failed."""
    failed = _true(job, "Failed")
    if failed is None:
        return None
    reason = str(failed.get("reason") or "Failed")
    return reason, str(failed.get("message") or reason)[:MESSAGE_LIMIT]


def why_not_running(
    workload: Body | None, pods: Sequence[Body], events: Sequence[Body] = ()
) -> Problem | None:
    """Why a workload is not running, in Kubernetes' words: a failed Job's reason (with what held
    its pods before, when anything did), else `blocked`'s answer; None when nothing is wrong.

    Args:
        workload: a batch/v1 Job or apps/v1 Deployment (or ReplicaSet) body, or None.
        pods: the workload's pods (any order).
        events: core/v1 Events about the workload (only `FailedCreate` ones are read).
    """
    now = blocked(workload, pods, events)
    failed = job_failure(workload)
    if failed is None:
        return now
    reason, message = failed
    if now is not None:
        message = f"{message} ({now[0]}: {now[1]})"
    return reason, message[:MESSAGE_LIMIT]
