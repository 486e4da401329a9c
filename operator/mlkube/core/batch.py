"""BatchPrediction decisions: which step runs, what the Jobs' states mean, what status says.

A run has three steps, each one Job with a deterministic name, so a restarted operator finds them
and never starts one twice: plan (list the input files and count their rows: the shards),
shards (one Indexed Job, an index per shard, `backoffLimitPerIndex`), manifest (merge the
shards' records into ``_manifest.json``). The phase moves Pending -> Planning -> Running ->
Finalizing -> Succeeded or Failed; the version scoring the run is pinned in status when planning
starts, so a version approved mid-run never mixes into it.

Pure: the spec, status, an observation of the Jobs and their results, and the clock in; the new
status and the one step to start out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from mlkube.api.batchprediction import (
    MAX_FAILED_SHARDS,
    BatchPhase,
    BatchPredictionSpec,
    BatchPredictionStatus,
    ShardCounts,
    ShardFailure,
)
from mlkube.api.common import Body
from mlkube.core.conditions import Event, outcome_conditions, parse_timestamp, timestamp
from mlkube.core.waiting import Problem

Step = Literal["plan", "shards", "manifest"]
"""(reason, message) for a condition."""

WAIT_FOR_MODEL_SECONDS = 30.0
"""While no version can score the run: a safety net beside the ModelVersion's own events."""
RUNNING_POLL_SECONDS = 30.0
"""While a step runs: its Job's events bring every change at once; this only catches stuck pods."""
SHARDS_FAILED = "ShardsFailed"
SHARD_LABEL = "batch.kubernetes.io/job-completion-index"
"""The index of an Indexed Job's pod: its shard."""
DEADLINE_EXCEEDED = "DeadlineExceeded"


@dataclass(frozen=True)
class Target:
    """The ModelVersion scoring a run, as its spec records it."""

    name: str
    uri: str
    sha256: str


@dataclass(frozen=True)
class Observation:
    target: Target | None = None
    """The version the spec resolves to now (read only before the run pins one)."""
    target_problem: Problem | None = None
    forbidden: str | None = None
    """A URI of the spec (or of its ModelVersion) outside the namespace's store: the message."""
    plan_job: Body | None = None
    plan_result: Mapping[str, Any] | None = None
    """The plan pod's termination message, once its Job finished."""
    shards_job: Body | None = None
    shard_failures: Mapping[int, Problem] = field(default_factory=dict)
    """Why newly failed shards failed (their pods' termination messages)."""
    manifest_job: Body | None = None
    manifest_result: Mapping[str, Any] | None = None
    pod_problem: Problem | None = None
    """A step's pod that cannot start (its image, its Secret)."""


@dataclass
class Decision:
    status: BatchPredictionStatus
    create: Step | None = None
    parallelism: int | None = None
    """Patch the shards Job's parallelism to this (the spec changed mid-run)."""
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def parse_indexes(text: str | None) -> set[int]:
    """An Indexed Job's ``completedIndexes``/``failedIndexes``: ``"1,3-5"`` -> {1, 3, 4, 5}."""
    found: set[int] = set()
    for part in (text or "").split(","):
        if not part.strip():
            continue
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def shard_rows(rows: int, rows_per_shard: int, shard: int) -> int:
    """Rows of `shard`: rowsPerShard each, the last one what is left."""
    return max(0, min(rows_per_shard, rows - shard * rows_per_shard))


def shard_count(rows: int, rows_per_shard: int) -> int:
    return -(-rows // rows_per_shard)


def job_finished(job: Body | None) -> Body | None:
    """The Job's Complete or Failed condition, once it has one."""
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return next(
        (
            c
            for c in conditions
            if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        ),
        None,
    )


def unread_failures(status: BatchPredictionStatus, shards_job: Body | None) -> list[int]:
    """Failed shards whose reasons status does not hold yet, while it has room for them."""
    failed = parse_indexes(((shards_job or {}).get("status") or {}).get("failedIndexes"))
    known = {f.shard for f in status.failed_shards}
    room = MAX_FAILED_SHARDS - len(status.failed_shards)
    return sorted(failed - known)[: max(room, 0)]


def remaining_seconds(
    spec: BatchPredictionSpec, status: BatchPredictionStatus, now: datetime
) -> int:
    """What is left of activeDeadlineSeconds since the run started (the whole deadline before)."""
    if status.start_time is None:
        return spec.active_deadline_seconds
    spent = (now - parse_timestamp(status.start_time)).total_seconds()
    return int(spec.active_deadline_seconds - spent)


def _with_phase(
    status: BatchPredictionStatus,
    phase: BatchPhase,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> BatchPredictionStatus:
    s = status.model_copy(deep=True)
    s.phase = phase
    s.progress = message
    s.observed_generation = generation
    if phase in ("Succeeded", "Failed"):
        s.completion_time = s.completion_time or timestamp(now)
    s.conditions = outcome_conditions(s.conditions, phase, reason, message, generation, now)
    return s


def failed(
    status: BatchPredictionStatus, reason: str, message: str, generation: int | None, now: datetime
) -> BatchPredictionStatus:
    """The run ended in failure (a step's Job the API server refused, for one)."""
    return _with_phase(status, "Failed", reason, message, generation, now)


def _count(rows: int, noun: str) -> str:
    return f"{rows:,} {noun}{'' if rows == 1 else 's'}"


def progress_message(status: BatchPredictionStatus) -> str:
    """``3 of 10 shards done, 1 failed; 3,000,000 of 9,800,000 rows scored``."""
    shards = status.shards
    text = f"{shards.succeeded} of {_count(shards.total, 'shard')} done"
    if shards.failed:
        text += f", {shards.failed} failed"
    if status.rows is not None:
        text += f"; {status.rows_scored:,} of {_count(status.rows, 'row')} scored"
    return text


def failure_summary(status: BatchPredictionStatus) -> str:
    """Which shards failed and why, the first one's message in full, worded by how many:
    ``all 3 shards failed: shard 0: ...``, ``1 of 4 shards failed (the other 3 shards' parts
    are complete): shard 2: ...``, or with shards that never finished, how many of each."""
    shards = status.shards
    total, done, bad = shards.total, shards.succeeded, shards.failed
    unfinished = max(total - done - bad, 0)
    if total == 1 and bad == 1:
        head = "the run's only shard failed"
    elif bad == total:
        head = f"all {total:,} shards failed"
    elif unfinished:
        head = f"{done} of {_count(total, 'shard')} done, " + (f"{bad} failed, " if bad else "")
        head += f"{unfinished} never finished"
    elif done == 1:
        head = f"{bad} of {_count(total, 'shard')} failed (the other shard's part is complete)"
    else:
        head = f"{bad} of {_count(total, 'shard')} failed (the other {done:,} shards' parts are complete)"
    failed = status.failed_shards
    if not failed:
        return head
    first = failed[0]
    others = [str(f.shard) for f in failed[1:]]
    more = bad - len(failed)
    tail = f"; also shard{'s' if len(others) > 1 else ''} {', '.join(others)}" if others else ""
    tail += f" and {more} more" if more > 0 else ""
    return f"{head}: shard {first.shard}: {first.reason}: {first.message}{tail}"


def _step_failure(job: Body, result: Mapping[str, Any] | None, step: str) -> Problem:
    """Why a plan or manifest Job ended without its result: its pod's own words, else the Job's."""
    if result and result.get("status") == "Failed":
        return str(result.get("reason") or f"{step.capitalize()}Failed"), str(
            result.get("message") or ""
        )
    finished = job_finished(job) or {}
    if finished.get("type") == "Complete":
        return "NoResult", f"the {step} step finished without reporting a result"
    reason = str(finished.get("reason"))
    return (
        DEADLINE_EXCEEDED if reason == DEADLINE_EXCEEDED else f"{step.capitalize()}Failed",
        f"the {step} Job failed: {finished.get('message') or reason}",
    )


def _count_shards(
    status: BatchPredictionStatus,
    spec: BatchPredictionSpec,
    job: Body,
    failures: Mapping[int, Problem],
) -> list[Event]:
    """Shards done and failed, rows scored, newly failed shards named; returns their Events."""
    job_status = job.get("status") or {}
    done = parse_indexes(job_status.get("completedIndexes"))
    failed = parse_indexes(job_status.get("failedIndexes"))
    rows = status.rows or 0
    status.shards = ShardCounts(total=status.shards.total, succeeded=len(done), failed=len(failed))
    status.rows_scored = sum(shard_rows(rows, spec.rows_per_shard, i) for i in done)
    events = []
    known = {f.shard for f in status.failed_shards}
    for shard, (reason, message) in sorted(failures.items()):
        if shard in known or len(status.failed_shards) >= MAX_FAILED_SHARDS:
            continue
        status.failed_shards.append(ShardFailure(shard=shard, reason=reason, message=message))
        events.append(Event("Warning", "ShardFailed", f"shard {shard}: {reason}: {message}"))
    status.failed_shards.sort(key=lambda f: f.shard)
    return events


@dataclass
class _Run:
    """One decision in the making: what every step's branch reads, and how it ends."""

    spec: BatchPredictionSpec
    status: BatchPredictionStatus
    o: Observation
    now: datetime
    generation: int | None
    before: BatchPhase | None

    def to(
        self,
        phase: BatchPhase,
        reason: str,
        message: str,
        *,
        create: Step | None = None,
        events: Iterable[Event] = (),
        parallelism: int | None = None,
    ) -> Decision:
        new = _with_phase(self.status, phase, reason, message, self.generation, self.now)
        said = list(events)
        if phase in ("Succeeded", "Failed") and self.before != phase:
            said.append(Event("Warning" if phase == "Failed" else "Normal", reason, message))
        waits = phase not in ("Succeeded", "Failed")
        return Decision(
            new,
            create=create,
            parallelism=parallelism,
            events=said,
            requeue_after=(WAIT_FOR_MODEL_SECONDS if phase == "Pending" else RUNNING_POLL_SECONDS)
            if waits
            else None,
        )

    @property
    def left(self) -> int:
        return remaining_seconds(self.spec, self.status, self.now)


def decide(
    spec: BatchPredictionSpec,
    status: BatchPredictionStatus,
    observation: Observation,
    now: datetime,
    generation: int | None,
) -> Decision:
    """The next status, and the step to start (None: wait for the running one's Job)."""
    if status.phase in ("Succeeded", "Failed"):
        return Decision(status)
    run = _Run(spec, status.model_copy(deep=True), observation, now, generation, status.phase)
    o = observation
    if o.forbidden is not None:
        return run.to("Failed", "ForbiddenURI", o.forbidden)
    if run.status.model_version is None:
        if o.target is None:
            reason, message = o.target_problem or ("ModelVersionNotFound", "no version to score")
            return run.to("Pending", reason, message)
        run.status.model_version = o.target.name
        run.status.model_sha256 = o.target.sha256
        run.status.start_time = timestamp(now)
        message = f"counting the input rows; {o.target.name} will score them"
        return run.to("Planning", "Planning", message, create="plan",
                      events=[Event("Normal", "Planning", message)])  # fmt: skip
    if run.status.phase in (None, "Pending", "Planning"):
        return _planning(run)
    if run.status.phase == "Running":
        return _running(run)
    return _finalizing(run)


def _planning(run: _Run) -> Decision:
    job, status = run.o.plan_job, run.status
    counting = "counting the input rows"
    if job is None:
        if run.left <= 0:
            return run.to(
                "Failed", DEADLINE_EXCEEDED, "activeDeadlineSeconds passed while planning"
            )
        return run.to("Planning", "Planning", counting, create="plan")
    finished = job_finished(job)
    if finished is None:
        problem = run.o.pod_problem
        if problem is None:
            return run.to("Planning", "Planning", counting)
        if problem[0] == "ImagePullFailed":
            return run.to("Failed", *problem)
        return run.to("Planning", problem[0], f"the plan pod cannot start: {problem[1]}")
    result = run.o.plan_result or {}
    if result.get("status") != "Planned":
        return run.to("Failed", *_step_failure(job, result, "plan"))
    rows, shards = int(result["rows"]), int(result["shards"])
    status.rows = rows
    status.shards = ShardCounts(total=shards)
    if run.left <= 0:
        return run.to("Failed", DEADLINE_EXCEEDED, "activeDeadlineSeconds passed while planning")
    planned = (
        f"{_count(rows, 'row')} in {_count(int(result.get('files') or 0), 'file')}: "
        f"{_count(shards, 'shard')} of up to {run.spec.rows_per_shard:,} rows"
    )
    return run.to("Running", "Running", progress_message(status), create="shards",
                  events=[Event("Normal", "Planned", planned)])  # fmt: skip


def _running(run: _Run) -> Decision:
    job, status = run.o.shards_job, run.status
    if job is None:
        if run.left <= 0:
            return run.to("Failed", DEADLINE_EXCEEDED,
                          "activeDeadlineSeconds passed before the shards started")  # fmt: skip
        return run.to("Running", "Running", progress_message(status), create="shards")
    events = _count_shards(status, run.spec, job, run.o.shard_failures)
    if job_finished(job) is not None:
        return run.to("Finalizing", "WritingManifest",
                      f"{progress_message(status)}; writing the manifest", create="manifest",
                      events=events)  # fmt: skip
    problem = run.o.pod_problem
    if problem is not None and problem[0] == "ImagePullFailed":
        # no shard can start: the Job would only wait for its deadline
        return run.to("Failed", *problem, events=events)
    message = progress_message(status)
    if problem is not None:
        message += f"; a shard's pod cannot start: {problem[1]}"
    wanted = min(run.spec.parallelism, status.shards.total)
    current = (job.get("spec") or {}).get("parallelism")
    return run.to("Running", "Running", message, events=events,
                  parallelism=wanted if current is not None and current != wanted else None)  # fmt: skip


def _finalizing(run: _Run) -> Decision:
    job, status = run.o.manifest_job, run.status
    writing = f"{progress_message(status)}; writing the manifest"
    if job is None:
        return run.to("Finalizing", "WritingManifest", writing, create="manifest")
    if job_finished(job) is None:
        return run.to("Finalizing", "WritingManifest", writing)
    result = run.o.manifest_result or {}
    if result.get("status") != "Written":
        return run.to("Failed", *_step_failure(job, result, "manifest"))
    status.manifest_uri = str(result.get("uri") or "") or None
    if (job_finished(run.o.shards_job) or {}).get("reason") == DEADLINE_EXCEEDED:
        return run.to("Failed", DEADLINE_EXCEEDED, f"activeDeadlineSeconds passed: "
                      f"{progress_message(status)}; the manifest names the shards done")  # fmt: skip
    if status.shards.failed or status.shards.succeeded < status.shards.total:
        return run.to("Failed", SHARDS_FAILED, failure_summary(status))
    status.rows_scored = int(result.get("rowsOut", status.rows_scored))
    return run.to("Succeeded", "Succeeded",
                  f"{progress_message(status)}; manifest {status.manifest_uri}")  # fmt: skip


def describe_failures(pods: Iterable[Body], container: str) -> dict[int, Problem]:
    """Why each failed shard failed, from its newest pod: the worker's termination message, else
    how the container ended (OOMKilled, a signal's exit code) and the log tail the kubelet kept."""
    newest: dict[int, Body] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        index = str((meta.get("labels") or {}).get(SHARD_LABEL, ""))
        if not index.isdigit():
            continue
        seen = newest.get(int(index))
        if seen is None or meta.get("creationTimestamp", "") > seen["metadata"].get(
            "creationTimestamp", ""
        ):
            newest[int(index)] = pod
    found: dict[int, Problem] = {}
    for shard, pod in newest.items():
        statuses: list[Body] = (pod.get("status") or {}).get("containerStatuses") or []
        worker: Body = next((s for s in statuses if s.get("name") == container), {})
        found[shard] = _termination_problem((worker.get("state") or {}).get("terminated") or {})
    return found


def _termination_problem(ended: Mapping[str, Any]) -> Problem:
    text = str(ended.get("message") or "")
    try:
        result = json.loads(text) if text else None
    except json.JSONDecodeError:
        result = None
    if isinstance(result, dict) and result.get("status") == "Failed":
        return str(result.get("reason") or "ShardFailed"), str(result.get("message") or "")
    how = f"exit code {ended.get('exitCode')}" if ended else "no result"
    if ended.get("reason"):
        how += f", {ended['reason']}"
    tail = f": {text[-512:]}" if text and result is None else ""
    return "ShardFailed", f"the shard's pod failed ({how}){tail}"
