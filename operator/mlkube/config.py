"""Operator-wide settings, read once from the environment the Helm chart sets."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlkube import __version__

ARTIFACT_MOUNT_PATH = "/var/lib/mlkube/artifacts"


@dataclass(frozen=True)
class OperatorConfig:
    runtime_image: str = f"localhost/mlkube-runtime:{__version__}"
    artifact_pvc: str | None = "mlkube-artifacts"
    """A PVC of this name in each workload namespace holds the artifacts; None means object storage."""
    artifact_root: str = f"file://{ARTIFACT_MOUNT_PATH}"
    """What pods see as the store root: the PVC's mount path, or an s3:// URI."""
    artifact_storage_size: str = "1Gi"
    artifact_storage_class: str | None = None
    s3_secret: str | None = None
    """A Secret whose keys (AWS_ACCESS_KEY_ID, ...) are handed to pods as environment."""
    service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"

    @classmethod
    def from_env(cls) -> OperatorConfig:
        root = os.environ.get("MLKUBE_ARTIFACT_ROOT")
        object_storage = root is not None and not root.startswith("file://")
        return cls(
            runtime_image=os.environ.get("MLKUBE_RUNTIME_IMAGE", cls.runtime_image),
            artifact_pvc=None
            if object_storage
            else os.environ.get("MLKUBE_ARTIFACT_PVC", "mlkube-artifacts"),
            artifact_root=root or cls.artifact_root,
            artifact_storage_size=os.environ.get(
                "MLKUBE_ARTIFACT_STORAGE_SIZE", cls.artifact_storage_size
            ),
            artifact_storage_class=os.environ.get("MLKUBE_ARTIFACT_STORAGE_CLASS") or None,
            s3_secret=os.environ.get("MLKUBE_S3_SECRET") or None,
            service_account=os.environ.get("MLKUBE_WORKLOAD_SERVICE_ACCOUNT") or None,
        )
