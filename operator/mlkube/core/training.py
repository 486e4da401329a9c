"""TrainingJob decisions: which version to train, what the Job's state means, what to register.

Pure functions over API objects as dicts; the handlers feed them and write what they return.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from mlkube.api.common import API_VERSION
from mlkube.api.modelversion import (
    Approval,
    Artifact,
    Column,
    Framework,
    Lineage,
    LogWindow,
    ModelVersionSpec,
    model_version_name,
)
from mlkube.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from mlkube.builders.common import MANAGED_BY, Manifest, Owner
from mlkube.builders.training import TRAINER
from mlkube.core.conditions import outcome_conditions, timestamp
from mlkube.core.waiting import IMAGE_PULL_FAILED, blocked

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
        return Outcome("Failed", reason, str(failed.get("message") or failed.get("reason") or ""))
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
        s.metrics = {str(k): str(v) for k, v in (outcome.result.get("metrics") or {}).items()}
    s.conditions = outcome_conditions(
        s.conditions, outcome.phase, outcome.reason, outcome.message, generation, now
    )
    return s


def model_version_manifest(
    owner: Owner, spec: TrainingJobSpec, result: dict[str, Any], image: str, now: datetime
) -> Manifest:
    """The registry entry for a successful training.

    No owner reference on purpose: deleting a TrainingJob never deletes its ModelVersions.
    """
    version = int(result["version"])
    approval = None
    if spec.approval_policy == "AutoApproveOnGates":
        approval = Approval(
            approved=True,
            by="policy:AutoApproveOnGates",
            at=timestamp(now),
            reason="every quality gate passed",
        )
    framework = result.get("framework") or {}
    mv = ModelVersionSpec(
        model=spec.model,
        version=version,
        task=result["task"],
        artifact=Artifact(
            uri=result["artifactUri"], sha256=result["sha256"], files=result.get("files") or {}
        ),
        framework=Framework(
            version=framework.get("version", "unknown"),
            python_version=framework.get("pythonVersion"),
        ),
        # [name, type] or [name, type, true] for a column that may be null
        input_schema=[
            Column(name=c[0], type=c[1], nullable=bool(c[2:])) for c in result.get("columns") or []
        ],
        target=spec.target,
        classes=result.get("classes"),
        metrics={str(k): str(v) for k, v in (result.get("metrics") or {}).items()},
        lineage=Lineage(
            training_job=owner.name,
            dataset_uri=spec.dataset.describe(),
            inference_log=LogWindow.model_validate(result["inferenceLog"])
            if result.get("inferenceLog")
            else None,
            dataset_digest=result.get("datasetDigest"),
            image=image,
            estimator=spec.estimator.class_name,
            params=spec.estimator.hyperparameters,
            seed=spec.split.seed,
        ),
        reference_sample_uri=f"{result['artifactUri']}/reference.parquet",
        approval=approval,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": model_version_name(spec.model, version),
            "namespace": owner.namespace,
            "labels": {
                **MANAGED_BY,
                "mlkube.io/model": spec.model,
                "mlkube.io/trainingjob": owner.name,
            },
        },
        "spec": mv.to_api(),
    }
