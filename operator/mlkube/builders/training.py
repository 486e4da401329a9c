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
from mlkube.runtime.outcome import EXIT_PERMANENT

TRAINER = "trainer"


def job_name(trainingjob: str) -> str:
    return child_name(trainingjob, "train")


def trainer_labels(owner: Owner, spec: TrainingJobSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlkube-trainer",
        "mlkube.io/trainingjob": owner.name,
        "mlkube.io/model": spec.model,
    }


def tracking_env(spec: TrainingJobSpec) -> list[Manifest]:
    """The trainer's env from tracking.mlflow.credentialsSecret."""
    mlflow = spec.tracking.mlflow if spec.tracking else None
    return credentials_env(mlflow.credentials_secret if mlflow else None)


def build_job(
    owner: Owner,
    spec: TrainingJobSpec,
    version: int,
    config: OperatorConfig,
    champion: tuple[str, str] | None = None,
) -> Manifest:
    """The Job that trains `version` of the model; `champion` is (artifact URI, sha256) to beat.

    Its pod template never depends on `suspend` (a Job's template is immutable, and suspending is
    forwarded as a patch of `spec.suspend` alone); it has no ttlSecondsAfterFinished because the
    operator deletes it only after reading its result."""
    image = spec.image or config.runtime_image
    args = [
        "train",
        "--spec", f"env:{SPEC_ENV}",
        "--artifact-root", config.artifact_root,
        "--namespace", owner.namespace,
        "--version", str(version),
    ]  # fmt: skip
    if champion:
        args += ["--champion-uri", champion[0], "--champion-sha256", champion[1]]
    container = runtime_container(
        TRAINER,
        image,
        args,
        [
            spec_env(spec, exclude={"suspend"}),
            {"name": "MLKUBE_TRAININGJOB", "value": owner.name},
            {"name": "MLKUBE_IMAGE", "value": image},
            *tracking_env(spec),
        ],
        resources(spec.resources, {"cpu": "100m", "memory": "256Mi"}),
        config,
    )
    labels = trainer_labels(owner, spec)
    job_spec: Manifest = {
        "backoffLimit": spec.backoff_limit,
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "suspend": spec.suspend,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": TRAINER,
                        "operator": "In",
                        "values": [EXIT_PERMANENT],
                    },
                }
            ]
        },
        "template": {
            "metadata": {"labels": labels},
            "spec": pod_spec(container, config, restart_policy="Never"),
        },
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
    labels = {"app.kubernetes.io/name": "mlkube-verify", "mlkube.io/modelversion": owner.name}
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
