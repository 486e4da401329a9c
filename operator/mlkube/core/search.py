"""Hyperparameter search decisions: what the trials' Indexed Job and its pods say.

Each trial pod reports its record (`mlkube.runtime.train.run_trial`) in its termination message
and in the store; the operator reads the messages for progress and the top trials, the winner's
pod reads the store (the records of pods long gone included) to choose the winner.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlkube.api.trainingjob import SearchStatus, TrainingJobSpec, Trial
from mlkube.builders.training import TRAINER
from mlkube.core.waiting import IMAGE_PULL_FAILED, blocked, why_not_running
from mlkube.estimators import ESTIMATORS
from mlkube.runtime.search import NO_RESULT, failed_record, first_failure, metric, rank

Body = dict[str, Any]
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
FAILED_INDEXES = "FailedIndexes"
"""The Job's Failed reason when some indexes failed (backoffLimitPerIndex) and the rest ended:
the trials are over, failed ones included."""


def parse_indexes(text: str | None) -> set[int]:
    """A Job's completedIndexes/failedIndexes ("1,3-5") as a set."""
    found: set[int] = set()
    for part in (text or "").split(","):
        if not part.strip():
            continue
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


def _message(pod: Body) -> str | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == TRAINER:
            terminated = (status.get("state") or {}).get("terminated") or {}
            return terminated.get("message") or None
    return None


def trial_records(pods: Iterable[Body], failed_indexes: Iterable[int] = ()) -> list[Body]:
    """One record per trial that has one: the newest pod's record of each index, and a failed
    record for each index the Job gave up on without one. A pod's failure report without an
    index (a transient error the Job retries) is not a trial's end."""
    records: dict[int, Body] = {}
    newest: dict[int, str] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        index_text = (meta.get("annotations") or {}).get(INDEX_ANNOTATION)
        text = _message(pod)
        if index_text is None or text is None:
            continue
        index, created = int(index_text), str(meta.get("creationTimestamp", ""))
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or record.get("index") != index:
            continue
        if index not in records or created >= newest[index]:
            records[index], newest[index] = {**record, "pod": meta.get("name")}, created
    for index in failed_indexes:
        if index not in records:
            records[index] = failed_record(
                index, NO_RESULT, f"trial {index} failed without recording a result"
            )
    return [records[i] for i in sorted(records)]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def as_trial(record: Mapping[str, Any]) -> Trial:
    """A record (a pod's, or the winner's summary) as status shows it, bounded."""
    return Trial(
        index=int(record["index"]),
        status="Succeeded" if record.get("status", "Succeeded") == "Succeeded" else "Failed",
        parameters={
            str(k)[:256]: _text(v)[:1024] for k, v in (record.get("parameters") or {}).items()
        },
        value=str(record["value"])[:64] if record.get("value") is not None else None,
        fit_seconds=str(record["fitSeconds"])[:64] if record.get("fitSeconds") else None,
        pod=record.get("pod"),
        reason=str(record["reason"])[:63] if record.get("reason") else None,
        message=str(record["message"])[:1024] if record.get("message") else None,
    )


def search_status(
    spec: TrainingJobSpec, records: Sequence[Mapping[str, Any]], old: SearchStatus | None
) -> SearchStatus:
    """Trials done/total/failed and the top `search.top`, best first."""
    assert spec.search is not None
    name = metric(spec.search, ESTIMATORS[spec.estimator.class_name])
    total = spec.search.trial_count()
    failed = sum(1 for r in records if r.get("status") != "Succeeded")
    top = [as_trial(r) for r in rank(records, name)[: spec.search.top]]
    return SearchStatus(
        metric=name,
        total=total,
        done=len(records),
        failed=failed,
        progress=f"{len(records)}/{total}",
        top=top,
        winner=old.winner if old else None,
        trials_uri=old.trials_uri if old else None,
    )


def trials_over(job: Body) -> str | None:
    """None while the trials run; "" when they are over (every index ended, some perhaps
    failed); else the Job's Failed reason that ended them early (a deadline, a whole Job's
    failure policy)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return ""
        if condition.get("type") == "Failed":
            reason = str(condition.get("reason") or "")
            return "" if reason == FAILED_INDEXES else reason or "TrainingFailed"
    return None


def every_trial_failed(records: Sequence[Mapping[str, Any]], total: int) -> tuple[str, str] | None:
    """(reason, message) when every one of `total` trials has a record and failed."""
    if len(records) < total or any(r.get("status") == "Succeeded" for r in records):
        return None
    return first_failure(records)


def trials_blocked(
    job: Body, pods: Sequence[Body], events: Sequence[Body]
) -> tuple[str, str, bool] | None:
    """(reason, message, fatal) when the trial pods cannot start (`core.waiting`); an image
    that cannot be pulled is fatal."""
    problem = blocked(job, list(pods), events)
    if problem is None:
        return None
    reason, detail = problem
    return reason, f"the trial pods cannot start: {detail}".strip(), reason == IMAGE_PULL_FAILED


def trials_failure_words(job: Body, pods: Sequence[Body], events: Sequence[Body]) -> str:
    _, words = why_not_running(job, list(pods), events) or ("", "")
    return f"the trials Job failed: {words}".strip()
