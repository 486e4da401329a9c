"""TrainingJob decisions: which version to train, what the Job's state means, what to register.

Pure functions over API objects as dicts, in the Deployment reconciler's shape: the controller
observes (`Observation`), `decide` chooses, the controller acts and writes the status it returns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from mlkube.api.common import Body, ConditionStatus
from mlkube.api.modelversion import MlflowRun, model_version_name
from mlkube.api.trainingjob import ChampionGate, SearchStatus, TrainingJobSpec, TrainingJobStatus
from mlkube.builders.training import TRAINER
from mlkube.core.conditions import (
    INVALID_SPEC,
    Event,
    condition,
    outcome_conditions,
    parse_timestamp,
    set_condition,
    timestamp,
)
from mlkube.core.search import (
    as_trial,
    every_trial_failed,
    parse_indexes,
    search_status,
    trial_records,
    trials_blocked,
    trials_failure_words,
    trials_over,
)
from mlkube.core.waiting import IMAGE_PULL_FAILED, blocked, why_not_running
from mlkube.tenancy import FORBIDDEN_URI

JOB_FAILURE_REASONS = {
    "DeadlineExceeded": "DeadlineExceeded",
    "BackoffLimitExceeded": "BackoffLimitExceeded",
    "PodFailurePolicy": "TrainingFailed",
}

Phase = Literal["Pending", "Suspended", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    reason: str
    message: str
    result: dict[str, Any] = field(default_factory=dict)
    """The trainer's termination message, parsed."""


def next_version(taken: list[int]) -> int:
    """Versions are numbered per model and namespace, never reused."""
    return max(taken, default=0) + 1


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next(
        (c for c in conditions if c.get("type") == type_ and c.get("status") == "True"), None
    )


def _container_state(pod: dict[str, Any], container: str = TRAINER) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    trainer: dict[str, Any] = next((s for s in statuses if s.get("name") == container), {})
    return dict(trainer.get("state") or {})


def termination_result(
    pods: list[dict[str, Any]], container: str = TRAINER
) -> dict[str, Any] | None:
    """The newest pod's termination message from `container`, if it left one."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        terminated = _container_state(pod, container).get("terminated") or {}
        message = terminated.get("message")
        if message:
            try:
                parsed = json.loads(message)
            except json.JSONDecodeError:
                return {"status": "Failed", "reason": "TrainingFailed", "message": message[-1024:]}
            return parsed if isinstance(parsed, dict) else None
    return None


def training_outcome(
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    events: Sequence[dict[str, Any]] = (),
) -> Outcome:
    """What the Job, its pods and the Events about it say about the training. A pod that cannot
    start keeps it Pending with Kubernetes' reason and words (`core.waiting`), except an image
    that cannot be pulled, which fails it."""
    if job is None:
        return Outcome("Pending", "JobPending", "the training Job is being created")
    result = termination_result(pods) or {}
    if _condition(job, "Complete"):
        if result.get("status") == "Succeeded":
            return Outcome("Succeeded", "Succeeded", "trained and registered", result)
        return Outcome("Failed", "NoResult", "the trainer finished without reporting a result")
    failed = _condition(job, "Failed")
    if failed:
        if result.get("status") == "Failed":
            return Outcome(
                "Failed",
                str(result.get("reason", "TrainingFailed")),
                str(result.get("message", "")),
            )
        reason = JOB_FAILURE_REASONS.get(str(failed.get("reason")), "TrainingFailed")
        # the Job's words, and what held its pods before (a quota, an unschedulable pod)
        _, words = why_not_running(job, pods, events) or ("", "")
        return Outcome("Failed", reason, words)
    suspended = _condition(job, "Suspended") or (job.get("spec") or {}).get("suspend")
    problem = blocked(job, pods, () if suspended else events)
    if problem is not None:
        reason, detail = problem
        if reason == IMAGE_PULL_FAILED:
            return Outcome("Failed", reason, detail)
        return Outcome("Pending", reason, f"the trainer pod cannot start: {detail}".strip())
    if suspended:
        return Outcome("Suspended", "Suspended", "spec.suspend is true")
    if (job.get("status") or {}).get("active"):
        return Outcome("Running", "Training", "the trainer pod is running")
    return Outcome("Pending", "PodPending", "waiting for the trainer pod to start")


def training_status(
    status: TrainingJobStatus, outcome: Outcome, generation: int | None, now: datetime
) -> TrainingJobStatus:
    """The TrainingJob status for an outcome, with Succeeded/Running/Failed conditions upserted."""
    s = status.model_copy(deep=True)
    s.phase = outcome.phase
    s.progress = outcome.message
    s.observed_generation = generation
    if outcome.phase == "Running" and s.start_time is None:
        s.start_time = timestamp(now)
    if outcome.phase in ("Succeeded", "Failed"):
        s.completion_time = s.completion_time or timestamp(now)
    if outcome.result:  # a lost Job's outcome has none: what status holds stays
        s.metrics = {str(k): str(v) for k, v in (outcome.result.get("metrics") or {}).items()}
    s.conditions = outcome_conditions(
        s.conditions, outcome.phase, outcome.reason, outcome.message, generation, now
    )
    return s


def refused_spec(
    status: TrainingJobStatus, message: str, generation: int | None, now: datetime
) -> TrainingJobStatus:
    """A spec the operator refuses (`message` names the field): Failed with InvalidSpec, as a
    Job the API server refused; it trains once the spec changes (retries_after_fix)."""
    return training_status(status, Outcome("Failed", INVALID_SPEC, message), generation, now)


# -- the reconciler's decision -------------------------------------------------------------------

POLL_SECONDS = 10.0
"""While a Job runs: its events say when it ends; polling catches what no Job event tells, a pod
that cannot start or pods the API server refused (`core.waiting`)."""
TRACKED = "Tracked"
"""Condition: the training's MLflow run (spec.tracking.mlflow) was logged; False with
TrackingUnavailable when the server could not take it and tracking is not required."""
TRACKING_UNAVAILABLE = "TrackingUnavailable"
CHAMPION_NOT_FOUND = "ChampionNotFound"
JOB_LOST = "JobLost"
SCHEMA_TOO_LARGE = "SchemaTooLarge"

ChampionArtifact = tuple[str, str]
"""(artifact URI, sha256) of the version a challenger must beat."""


@dataclass(frozen=True)
class Observation:
    """What the controller saw of one TrainingJob's world this pass."""

    version: int
    """The version this TrainingJob trains (in status, on its Job, or claimed)."""
    job: Body | None = None
    job_lost: bool = False
    """The status names a Job the API server no longer has."""
    registered: bool = False
    """The ModelVersion of `version` exists (read only when the Job is lost)."""
    pods: Sequence[Body] = ()
    events: Sequence[Body] = ()
    """FailedCreate Events about the Job (`core.waiting`)."""
    champion: ChampionArtifact | str | None = None
    """Before the Job exists: the artifact `qualityGates.champion` names, or why there is none."""
    forbidden: str | None = None
    """Before the Job exists: a URI of the spec outside the namespace's store, the message."""
    refused: tuple[str, str] | None = None
    """(reason, message): the API server refused the Job as written."""
    trials_job: Body | None = None
    """spec.search's Indexed Job, before the training Job exists."""
    trial_pods: Sequence[Body] = ()
    trial_events: Sequence[Body] = ()


@dataclass
class Decision:
    status: TrainingJobStatus
    events: list[Event] = field(default_factory=list)
    create_job: bool = False
    create_trials: bool = False
    """Create spec.search's trials Job (`builders.training.build_trials_job`)."""
    suspend_trials: bool | None = None
    champion: ChampionArtifact | None = None
    """For the Job to create: the champion's artifact to score on the held-out split."""
    suspend: bool | None = None
    """Patch the Job's spec.suspend to this (batch/v1 semantics; the template never changes)."""
    register: dict[str, Any] | None = None
    """The trainer's result to register as a ModelVersion."""
    delete_job: bool = False
    requeue_after: float | None = None


def champion_name(gate: ChampionGate, deployment: Body | None) -> str | None:
    """The ModelVersion `qualityGates.champion` names: its own, or the one `deployment` (the
    Deployment the gate names, None when it does not exist) serves as stable."""
    if gate.deployment is None:
        return gate.model_version
    return ((deployment or {}).get("status") or {}).get("stableVersion") or None


def resolve_champion(
    gate: ChampionGate, deployment: Body | None, version: Body | None
) -> ChampionArtifact | str:
    """The champion's artifact, or why there is none (a message naming the field); `version`
    is the ModelVersion `champion_name` returned, None when it does not exist."""
    name = champion_name(gate, deployment)
    if name is None:
        return f"qualityGates.champion: Deployment {gate.deployment} serves no version"
    if version is None:
        return f"qualityGates.champion: ModelVersion {name} does not exist"
    artifact = version["spec"]["artifact"]
    return str(artifact["uri"]), str(artifact["sha256"])


def checked_uris(spec: TrainingJobSpec, champion: ChampionArtifact | None) -> dict[str, str | None]:
    """Every URI the trainer reads, by the field that names it, for the tenancy check."""
    log = spec.dataset.inference_log
    return {
        "spec.dataset.uri": spec.dataset.uri,
        "spec.qualityGates.champion.modelVersion": champion[0] if champion else None,
        **{
            f"spec.dataset.inferenceLog.feedbackUris[{i}]": uri
            for i, uri in enumerate(log.feedback_uris if log else [])
        },
    }


def failed_reason(status: TrainingJobStatus) -> str | None:
    failed = condition(status.conditions, "Failed")
    return failed.reason if failed is not None and failed.status == "True" else None


def retries_after_fix(status: TrainingJobStatus, generation: int | None) -> bool:
    """A TrainingJob refused before its Job was created (InvalidSpec, ForbiddenURI,
    ChampionNotFound) trains once its spec changed; any other end is final."""
    return (
        status.phase == "Failed"
        and status.job_name is None
        and generation != status.observed_generation
    )


def seconds_to_clean_up(
    spec: TrainingJobSpec, status: TrainingJobStatus, now: datetime
) -> float | None:
    """Seconds until the finished Job goes, ttlSecondsAfterFinished after its result was
    recorded in status (never before); None: it stays."""
    ttl = spec.ttl_seconds_after_finished
    if ttl is None or status.completion_time is None:
        return None
    return ttl - (now - parse_timestamp(status.completion_time)).total_seconds()


def decide(
    spec: TrainingJobSpec,
    status: TrainingJobStatus,
    o: Observation,
    now: datetime,
    generation: int | None,
    job_name: str,
) -> Decision:
    """One look at a TrainingJob: its new status, what to create, patch, register or delete,
    the Events to post and when to look again. `job_name` is the name of its Job."""
    if status.phase in ("Succeeded", "Failed") and not retries_after_fix(status, generation):
        children = o.job is not None or o.trials_job is not None
        left = seconds_to_clean_up(spec, status, now) if children else None
        if left is not None and left <= 0:
            return Decision(status, delete_job=True)
        return Decision(status, requeue_after=left)
    decision = Decision(status)
    searched = _search_phase(spec, status, o, decision) if spec.search else None
    if o.job is None and o.job_lost:
        outcome, named = _lost(status, o)
    elif o.job is None and searched is not None and searched[0] is not None:
        outcome, named = searched[0], False
    elif o.job is None:
        outcome, named = _before_the_job(spec, o, decision), False
    else:
        job = o.job
        if bool((job.get("spec") or {}).get("suspend")) != spec.suspend:
            decision.suspend = spec.suspend
            job = {**job, "spec": {**(job.get("spec") or {}), "suspend": spec.suspend}}
        outcome, named = training_outcome(job, list(o.pods), o.events), True
    if outcome.phase == "Succeeded" and outcome.result and not outcome.result.get("columns"):
        outcome = Outcome(
            "Failed",
            SCHEMA_TOO_LARGE,
            "the input schema did not fit the termination message; register the version by hand",
            outcome.result,
        )
    new = training_status(status, outcome, generation, now)
    new.version = o.version
    if searched is not None:
        new.search = searched[1]
    if o.trials_job is not None:
        new.job_name = str(o.trials_job["metadata"]["name"])
    if named or decision.create_job:
        new.job_name = job_name
    if outcome.phase == "Succeeded":
        new.model_version = model_version_name(spec.model, o.version)
        decision.register = outcome.result or None
        _winner(new, outcome.result)
        _tracked(new, status, outcome.result, decision, generation, now)
    decision.status = new
    if (new.phase, failed_reason(new)) != (status.phase, failed_reason(status)) and not (
        decision.create_job or decision.create_trials
    ):
        type_: Literal["Normal", "Warning"] = "Warning" if new.phase == "Failed" else "Normal"
        decision.events.append(Event(type_, outcome.reason, outcome.message or str(new.phase)))
    if new.phase in ("Pending", "Running"):
        decision.requeue_after = POLL_SECONDS
    elif new.phase in ("Succeeded", "Failed") and (o.job or o.trials_job) is not None:
        decision.requeue_after = seconds_to_clean_up(spec, new, now)
    return decision


def mlflow_run(result: dict[str, Any]) -> MlflowRun | None:
    """The run the trainer logged (its result's `tracking`), None without one."""
    tracking = result.get("tracking") or {}
    return MlflowRun.model_validate(tracking) if tracking.get("runId") else None


def _tracked(
    new: TrainingJobStatus,
    old: TrainingJobStatus,
    result: dict[str, Any],
    decision: Decision,
    generation: int | None,
    now: datetime,
) -> None:
    """The run in status and the Tracked condition; a Warning when it could not be logged."""
    tracking = result.get("tracking")
    if not tracking:
        return
    new.tracking = mlflow_run(result)
    value: ConditionStatus
    if new.tracking is not None:
        why, value, message = "RunLogged", "True", f"MLflow run {new.tracking.run_id}"
    else:
        why, value, message = TRACKING_UNAVAILABLE, "False", str(tracking.get("unavailable"))
    new.conditions = set_condition(new.conditions, TRACKED, value, why, message, generation, now)
    before = condition(old.conditions, TRACKED)
    if value == "False" and (before is None or before.reason != why):
        decision.events.append(Event("Warning", why, message))


def _lost(status: TrainingJobStatus, o: Observation) -> tuple[Outcome, bool]:
    """The Job went before its result was read (deleted, or lost while the operator was down):
    never trained again under a new version. A registered version means it finished."""
    if o.registered:
        return Outcome("Succeeded", "Succeeded", "trained and registered"), True
    message = (
        f"Job {status.job_name} disappeared before its result was read; create a new "
        f"TrainingJob to train again (version {o.version} stays unused)"
    )
    return Outcome("Failed", JOB_LOST, message), True


def _refusal(o: Observation) -> Outcome | None:
    """What cannot train, before any Job (naming the field)."""
    if isinstance(o.champion, str):
        return Outcome("Failed", CHAMPION_NOT_FOUND, o.champion)
    if o.forbidden is not None:
        return Outcome("Failed", FORBIDDEN_URI, o.forbidden)
    if o.refused is not None:
        return Outcome("Failed", *o.refused)
    return None


def _before_the_job(spec: TrainingJobSpec, o: Observation, decision: Decision) -> Outcome:
    """No Job yet: refuse what cannot train (naming the field), else create it."""
    refused = _refusal(o)
    if refused is not None:
        return refused
    decision.create_job = True
    decision.champion = o.champion if isinstance(o.champion, tuple) else None
    decision.events.append(Event("Normal", "JobCreated", f"training {spec.model} v{o.version}"))
    return training_outcome(None, [])


# -- spec.search ---------------------------------------------------------------------------------


def _search_phase(
    spec: TrainingJobSpec, status: TrainingJobStatus, o: Observation, decision: Decision
) -> tuple[Outcome | None, SearchStatus | None] | None:
    """Before the training Job: create the trials' Indexed Job, follow it, or fail the search.
    (outcome, search status); outcome None when the trials are over and the winner trains. None
    once the training Job exists (its result completes the search's status)."""
    assert spec.search is not None
    if o.job is not None or o.job_lost:
        return None
    job = o.trials_job
    if job is None:
        refused = _refusal(o)
        if refused is not None:
            return refused, status.search
        total = spec.search.trial_count()
        decision.create_trials = True
        decision.events.append(
            Event("Normal", "TrialsCreated", f"{total} trials for {spec.model} v{o.version}")
        )
        new = search_status(spec, [], status.search)
        return Outcome("Pending", "TrialsPending", "the trials Job is being created"), new
    if bool((job.get("spec") or {}).get("suspend")) != spec.suspend:
        decision.suspend_trials = spec.suspend
        job = {**job, "spec": {**(job.get("spec") or {}), "suspend": spec.suspend}}
    failed_indexes = parse_indexes((job.get("status") or {}).get("failedIndexes"))
    records = trial_records(o.trial_pods, failed_indexes)
    new = search_status(spec, records, status.search)
    failure = every_trial_failed(records, new.total)
    if failure is not None:
        return Outcome("Failed", *failure), new
    over = trials_over(job)
    if over == "":
        return None, new
    if over is not None:
        reason = JOB_FAILURE_REASONS.get(over, "TrainingFailed")
        return Outcome(
            "Failed", reason, trials_failure_words(job, o.trial_pods, o.trial_events)
        ), new
    if spec.suspend:
        return Outcome("Suspended", "Suspended", "spec.suspend is true"), new
    problem = trials_blocked(job, o.trial_pods, o.trial_events)
    if problem is not None:
        reason, message, fatal = problem
        return Outcome("Failed" if fatal else "Pending", reason, message), new
    done = f"trials {new.done}/{new.total} done" + (f", {new.failed} failed" if new.failed else "")
    if (job.get("status") or {}).get("active"):
        return Outcome("Running", "Searching", done), new
    return Outcome("Pending", "PodPending", f"waiting for the trial pods to start; {done}"), new


def _winner(new: TrainingJobStatus, result: dict[str, Any]) -> None:
    """The search's winner, as the training that chose it reported it, in status."""
    searched = result.get("search") or {}
    if not searched.get("winner") or new.search is None:
        return
    new.search = new.search.model_copy(
        update={"winner": as_trial(searched["winner"]), "trials_uri": searched.get("trialsUri")}
    )
