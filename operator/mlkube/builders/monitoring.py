"""DriftMonitor -> batch/v1 CronJob running `mlkube-runtime drift` on the schedule."""

from __future__ import annotations

from dataclasses import dataclass

from mlkube.api.driftmonitor import DriftMonitorSpec
from mlkube.builders.common import (
    MANAGED_BY,
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
from mlkube.contract import DEPLOYMENT_LABEL, DRIFTMONITOR_LABEL
from mlkube.layout import inference_log_uri

CHECKER = "drift"
CRONJOB_NAME_LIMIT = 52
"""The CronJob controller appends an 11-character suffix to name each run's Job."""


@dataclass(frozen=True)
class Watched:
    """What a DriftMonitor's runs compare: the reference sample and the model version watched
    (its part of the inference log, its offline metrics and calibration for live quality)."""

    reference_uri: str
    model_version: str | None = None
    model_uri: str | None = None


def cronjob_name(monitor: str) -> str:
    return child_name(monitor, "drift", CRONJOB_NAME_LIMIT)


def build_cronjob(
    owner: Owner, spec: DriftMonitorSpec, watched: Watched, config: OperatorConfig
) -> Manifest:
    """A CronJob that never overlaps itself; each run's verdict is its termination message."""
    version_args = (
        [] if watched.model_version is None else ["--model-version", watched.model_version]
    )
    model_args = [] if watched.model_uri is None else ["--model-uri", watched.model_uri]
    labels = {
        "app.kubernetes.io/name": "mlkube-drift",
        DRIFTMONITOR_LABEL: owner.name,
        DEPLOYMENT_LABEL: spec.deployment,
    }
    container = runtime_container(
        CHECKER,
        spec.image or config.runtime_image,
        [
            "drift",
            "--spec",
            f"env:{SPEC_ENV}",
            "--reference",
            watched.reference_uri,
            "--log",
            inference_log_uri(config.artifact_root, owner.namespace, spec.deployment),
            *version_args,
            *model_args,
        ],
        [spec_env(spec)],
        resources(spec.resources, {"cpu": "100m", "memory": "256Mi"}),
        config,
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(cronjob_name(owner.name), owner, labels),
        "spec": {
            "schedule": spec.schedule,
            "suspend": spec.suspend,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": {**MANAGED_BY, **labels}},
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": 1800,
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": pod_spec(container, config, restart_policy="Never"),
                    },
                },
            },
        },
    }
