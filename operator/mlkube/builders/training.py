"""TrainingJob -> batch/v1 Job running `mlkube-runtime train`."""

from __future__ import annotations

from collections.abc import Mapping

from mlkube.api.trainingjob import TrainingJobSpec
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
from mlkube.builders.tracking import credentials_env
from mlkube.config import OperatorConfig
from mlkube.contract import MODELVERSION_LABEL, POD_NAME_ENV, TRAININGJOB_LABEL
from mlkube.runtime.outcome import EXIT_PERMANENT

TRAINER = "trainer"
TRIALS_LABEL = "mlkube.io/trials"


def job_name(trainingjob: str) -> str:
    return child_name(trainingjob, "train")


def trainer_labels(owner: Owner, spec: TrainingJobSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlkube-trainer",
        TRAININGJOB_LABEL: owner.name,
        "mlkube.io/model": spec.model,
    }


def tracking_env(spec: TrainingJobSpec) -> list[Manifest]:
    """The trainer's env from tracking.mlflow.credentialsSecret."""
    mlflow = spec.tracking.mlflow if spec.tracking else None
    return credentials_env(mlflow.credentials_secret if mlflow else None)


def trials_job_name(trainingjob: str) -> str:
    return child_name(trainingjob, "trials")


def _trainer_parts(
    owner: Owner,
    spec: TrainingJobSpec,
    version: int,
    config: OperatorConfig,
    extra_args: list[str],
    extra_env: list[Manifest],
) -> tuple[Manifest, dict[str, str]]:
    """(pod template, labels) of a pod running `mlkube-runtime train` for `version`."""
    image = spec.image or config.runtime_image
    args = [
        "train",
        "--spec", f"env:{SPEC_ENV}",
        "--artifact-root", config.artifact_root,
        "--namespace", owner.namespace,
        "--version", str(version),
        *extra_args,
    ]  # fmt: skip
    container = runtime_container(
        TRAINER,
        image,
        args,
        [
            spec_env(spec, exclude={"suspend"}),
            {"name": "MLKUBE_TRAININGJOB", "value": owner.name},
            {"name": "MLKUBE_IMAGE", "value": image},
            *extra_env,
        ],
        resources(spec.resources, {"cpu": "100m", "memory": "256Mi"}),
        config,
    )
    labels = trainer_labels(owner, spec)
    template = {
        "metadata": {"labels": labels},
        "spec": pod_spec(container, config, restart_policy="Never"),
    }
    return template, labels


def _fail_on_permanent(action: str) -> Manifest:
    return {
        "rules": [
            {
                "action": action,
                "onExitCodes": {
                    "containerName": TRAINER,
                    "operator": "In",
                    "values": [EXIT_PERMANENT],
                },
            }
        ]
    }


def build_job(
    owner: Owner,
    spec: TrainingJobSpec,
    version: int,
    config: OperatorConfig,
    champion: tuple[str, str] | None = None,
) -> Manifest:
    """The Job that trains `version` of the model; `champion` is (artifact URI, sha256) to beat.
    With spec.search it trains the best trial (read from the store) once the trials are done.

    Its pod template never depends on `suspend` (a Job's template is immutable, and suspending is
    forwarded as a patch of `spec.suspend` alone); it has no ttlSecondsAfterFinished because the
    operator deletes it only after reading its result."""
    args = ["--champion-uri", champion[0], "--champion-sha256", champion[1]] if champion else []
    template, labels = _trainer_parts(owner, spec, version, config, args, tracking_env(spec))
    job_spec: Manifest = {
        "backoffLimit": spec.backoff_limit,
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "suspend": spec.suspend,
        "podFailurePolicy": _fail_on_permanent("FailJob"),
        "template": template,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **metadata(job_name(owner.name), owner, labels),
            "annotations": {"mlkube.io/model-version": str(version)},
        },
        "spec": job_spec,
    }


def build_trials_job(
    owner: Owner, spec: TrainingJobSpec, version: int, config: OperatorConfig
) -> Manifest:
    """spec.search's trials as one Indexed Job: index i runs trial i (JOB_COMPLETION_INDEX),
    `search.parallelism` pods at once. `backoffLimitPerIndex` retries a trial alone (a trial the
    estimator refuses is recorded and exits 0; only a crash or the store fails an index), so one
    failing trial never fails the others; disruptions (a drained node) spend no retry. Trial pods
    never talk to MLflow (the winner's pod logs them), so they get no tracking credentials."""
    assert spec.search is not None
    pod_name = {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    template, labels = _trainer_parts(owner, spec, version, config, ["--trial"], [pod_name])
    labels = {**labels, TRIALS_LABEL: owner.name}
    template["metadata"]["labels"] = labels
    # spread over nodes where there are several; never held back where there is one
    template["spec"]["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {TRIALS_LABEL: owner.name}},
        }
    ]
    trials = spec.search.trial_count()
    policy = _fail_on_permanent("FailIndex")
    policy["rules"].append({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]})
    job_spec: Manifest = {
        "completionMode": "Indexed",
        "completions": trials,
        "parallelism": min(spec.search.parallelism, trials),
        "backoffLimitPerIndex": spec.backoff_limit,
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "suspend": spec.suspend,
        "podFailurePolicy": policy,
        "template": template,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **metadata(trials_job_name(owner.name), owner, labels),
            "annotations": {"mlkube.io/model-version": str(version)},
        },
        "spec": job_spec,
    }


def verify_job_name(model_version: str) -> str:
    return child_name(model_version, "verify")


def build_verify_job(
    owner: Owner,
    artifact_uri: str,
    sha256: str,
    config: OperatorConfig,
    files: Mapping[str, str] | None = None,
) -> Manifest:
    """A short Job that checks a ModelVersion's artifact: model.joblib against its sha256, and
    every other file a server or a drift check reads against the digests in `files`."""
    digests = dict(files or {})
    file_args = [arg for name in sorted(digests) for arg in ("--file", f"{name}={digests[name]}")]
    container = runtime_container(
        TRAINER,
        config.runtime_image,
        ["verify", "--uri", artifact_uri, "--sha256", sha256, *file_args],
        [],
        {"requests": {"cpu": "50m", "memory": "128Mi"}},
        config,
    )
    labels = {"app.kubernetes.io/name": "mlkube-verify", MODELVERSION_LABEL: owner.name}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **metadata(verify_job_name(owner.name), owner, labels),
            "annotations": {"mlkube.io/sha256": sha256},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 300,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec(container, config, restart_policy="Never"),
            },
        },
    }
