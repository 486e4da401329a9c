"""A successful training's result -> the ModelVersion that registers it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

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
from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.builders.common import MANAGED_BY, Manifest, Owner
from mlkube.contract import TRAININGJOB_LABEL
from mlkube.core.conditions import timestamp
from mlkube.core.training import mlflow_run


def model_version_manifest(
    owner: Owner, spec: TrainingJobSpec, result: dict[str, Any], image: str, now: datetime
) -> Manifest:
    """The registry entry for a successful training; `result` is the trainer's termination
    message (`mlkube.runtime.train.train`).

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
            # a search's winner trained with its own parameters over the spec's
            params=result.get("params", spec.estimator.hyperparameters),
            seed=spec.split.seed,
            mlflow=mlflow_run(result),
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
                TRAININGJOB_LABEL: owner.name,
            },
        },
        "spec": mv.to_api(),
    }
