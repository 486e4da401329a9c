"""BatchPrediction -> three batch/v1 Jobs running `mlkube-runtime batch`: plan, shards, manifest.

The shards Job is an Indexed Job: one index per shard, `backoffLimitPerIndex` so a failing shard
is retried (or given up) alone, never restarting the others. Its pod failure policy fails an
index at once on the worker's permanent exit code (a schema error in the rows: retrying cannot
fix it) and ignores disruptions (a drained node, an eviction), which do not spend a retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mlkube.api.batchprediction import BatchPredictionSpec
from mlkube.builders.common import (
    SPEC_ENV,
    Manifest,
    Owner,
    child_name,
    metadata,
    pod_spec,
    resources,
    runtime_container,
    spec_env,
)
from mlkube.config import OperatorConfig
from mlkube.contract import BATCHPREDICTION_ENV, BATCHPREDICTION_LABEL, SHARD_ATTEMPT_ENV
from mlkube.runtime.outcome import EXIT_PERMANENT

WORKER = "batch"
STEP_LABEL = "mlkube.io/batch-step"
Step = Literal["plan", "shards", "manifest"]
COMMANDS: dict[Step, str] = {"plan": "plan", "shards": "shard", "manifest": "manifest"}
"""`mlkube-runtime batch <command>` of each step."""
SMALL_STEP = {"cpu": "100m", "memory": "256Mi"}
DEFAULT_SHARD = {"cpu": "250m", "memory": "512Mi"}
BOOKKEEPING_DEADLINE_SECONDS = 600
"""The manifest step merges small records: it runs even after the run's deadline passed, so
the shards done are named."""


@dataclass(frozen=True)
class Scoring:
    """What the shards score with: the ModelVersion pinned in status."""

    model_version: str
    uri: str
    sha256: str


def job_name(batchprediction: str, step: Step) -> str:
    """``<name>-plan``, ``<name>-shards``, ``<name>-manifest``."""
    return child_name(batchprediction, step)


def labels(owner: Owner, step: Step) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlkube-batch",
        BATCHPREDICTION_LABEL: owner.name,
        STEP_LABEL: step,
    }


def _parts(
    owner: Owner,
    spec: BatchPredictionSpec,
    step: Step,
    args: list[str],
    config: OperatorConfig,
    job_spec: Manifest,
    container_resources: Manifest,
    extra_env: list[Manifest] | None = None,
) -> tuple[Manifest, Manifest]:
    """(metadata, spec) of a step's Job."""
    image = spec.image or config.runtime_image
    container = runtime_container(
        WORKER,
        image,
        ["batch", COMMANDS[step], "--spec", f"env:{SPEC_ENV}", "--run-id", owner.uid, *args],
        [
            # parallelism may change mid-run; the pod template never does
            spec_env(spec, exclude={"parallelism"}),
            {"name": BATCHPREDICTION_ENV, "value": owner.name},
            *(extra_env or []),
        ],
        container_resources,
        config,
    )
    step_labels = labels(owner, step)
    template = {
        "metadata": {"labels": step_labels},
        "spec": pod_spec(container, config, restart_policy="Never"),
    }
    return metadata(job_name(owner.name, step), owner, step_labels), {
        **job_spec,
        "template": template,
    }


def build_plan_job(
    owner: Owner,
    spec: BatchPredictionSpec,
    config: OperatorConfig,
    deadline_seconds: int,
    model_uri: str | None = None,
) -> Manifest:
    """List the input files, count their rows, check they hold the model's columns (from
    `model_uri`'s schema) and the id column, write the plan; its result names the shards."""
    meta, job = _parts(
        owner,
        spec,
        "plan",
        ["--model-uri", model_uri] if model_uri else [],
        config,
        {
            "backoffLimit": 2,
            "activeDeadlineSeconds": max(1, deadline_seconds),
            "podFailurePolicy": _fail_on_permanent("FailJob"),
        },
        {"requests": dict(SMALL_STEP)},
    )
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job}


def build_shards_job(
    owner: Owner,
    spec: BatchPredictionSpec,
    scoring: Scoring,
    shards: int,
    config: OperatorConfig,
    deadline_seconds: int,
) -> Manifest:
    """The Indexed Job of `shards` indexes; index i scores shard i (JOB_COMPLETION_INDEX)."""
    # the worker records which attempt of its shard it is
    attempts = [
        {"name": env, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{name}']"}}}
        for name, env in SHARD_ATTEMPT_ENV.items()
    ]
    model = ["--model-version", scoring.model_version, "--model-uri", scoring.uri]
    policy = _fail_on_permanent("FailIndex")
    policy["rules"].append({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]})
    meta, job = _parts(
        owner,
        spec,
        "shards",
        [*model, "--sha256", scoring.sha256],
        config,
        {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": min(spec.parallelism, shards),
            "backoffLimitPerIndex": spec.backoff_limit_per_index,
            "activeDeadlineSeconds": max(1, deadline_seconds),
            "podFailurePolicy": policy,
        },
        resources(spec.resources, DEFAULT_SHARD),
        attempts,
    )
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job}


def build_manifest_job(
    owner: Owner, spec: BatchPredictionSpec, scoring: Scoring, config: OperatorConfig
) -> Manifest:
    """Merge the shards' records into ``_manifest.json``; its result has the totals."""
    meta, job = _parts(
        owner,
        spec,
        "manifest",
        ["--model-version", scoring.model_version, "--sha256", scoring.sha256],
        config,
        {
            "backoffLimit": 2,
            "activeDeadlineSeconds": BOOKKEEPING_DEADLINE_SECONDS,
            "podFailurePolicy": _fail_on_permanent("FailJob"),
        },
        {"requests": dict(SMALL_STEP)},
    )
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job}


def _fail_on_permanent(action: str) -> Manifest:
    return {
        "rules": [
            {
                "action": action,
                "onExitCodes": {
                    "containerName": WORKER,
                    "operator": "In",
                    "values": [EXIT_PERMANENT],
                },
            }
        ]
    }
