"""MLflow's credentials as a pod's env, and the Job that sets a Deployment's aliases in MLflow's
registry (`mlkube-runtime mlflow-aliases`, `core.aliases`)."""

from __future__ import annotations

from mlkube.builders.common import (
    Manifest,
    Owner,
    child_name,
    metadata,
    pod_spec,
    runtime_container,
)
from mlkube.config import OperatorConfig
from mlkube.core.aliases import AliasSync

TRACKING_CREDENTIALS = {
    "username": "MLFLOW_TRACKING_USERNAME",
    "password": "MLFLOW_TRACKING_PASSWORD",
    "token": "MLFLOW_TRACKING_TOKEN",
}
"""Keys of a credentials Secret -> the env MLflow's client reads (basic auth, or a bearer
token)."""
ALIASES_CONTAINER = "aliases"
DIGEST_ANNOTATION = "mlkube.io/aliases"
ALIAS_JOB_TTL_SECONDS = 300
"""A finished Job is removed after this long; a failed one is then made again: the slow retry of
an unreachable or refusing tracking server."""


def credentials_env(secret: str | None) -> list[Manifest]:
    """The Secret's keys as env, each optional (basic auth or a token); the kubelet reads the
    Secret, so the operator never holds a tenant's tracking credentials."""
    if secret is None:
        return []
    return [
        {
            "name": env,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
        }
        for key, env in TRACKING_CREDENTIALS.items()
    ]


def alias_job_name(deployment: str) -> str:
    return child_name(deployment, "mlflow-aliases")


def build_alias_job(owner: Owner, sync: AliasSync, config: OperatorConfig) -> Manifest:
    """A short Job in the Deployment's namespace, with that namespace's credentials Secret, that
    converges the Deployment's aliases in one registered model. It never touches the artifact
    store; its annotation names its work (`AliasSync.digest`)."""
    args = [
        "mlflow-aliases",
        "--tracking-uri", sync.tracking_uri,
        "--registered-model", sync.registered_model,
        *(arg for alias in sorted(sync.set) for arg in ("--set", f"{alias}={sync.set[alias]}")),
        *(arg for alias in sync.delete for arg in ("--delete", alias)),
    ]  # fmt: skip
    container = runtime_container(
        ALIASES_CONTAINER,
        config.runtime_image,
        args,
        credentials_env(sync.credentials_secret),
        {"requests": {"cpu": "50m", "memory": "128Mi"}},
        config,
        store=False,
    )
    labels = {"app.kubernetes.io/name": "mlkube-mlflow-aliases", "mlkube.io/aliases-of": owner.name}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **metadata(alias_job_name(owner.name), owner, labels),
            "annotations": {DIGEST_ANNOTATION: sync.digest()},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 120,
            "ttlSecondsAfterFinished": ALIAS_JOB_TTL_SECONDS,
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec(container, config, restart_policy="Never", store=False),
            },
        },
    }
