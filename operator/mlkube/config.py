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
    artifact_access_mode: str = "ReadWriteOnce"
    """ReadWriteOnce holds while a namespace's pods share one node; ReadWriteMany (with an RWX
    storage class) lets them spread over nodes."""
    s3_secret: str | None = None
    """A Secret of this name in each workload namespace; its keys (AWS_ACCESS_KEY_ID, ...) are
    handed to that namespace's pods as environment, so each namespace can have its own key."""
    s3_endpoint_url: str | None = None
    """An S3-compatible server's address (AWS_ENDPOINT_URL in pods); None: AWS S3 itself."""
    allowed_uri_prefixes: tuple[str, ...] = ()
    """URI prefixes every namespace may read besides ``<root>/<namespace>/`` (shared datasets)."""
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
            artifact_access_mode=os.environ.get("MLKUBE_ARTIFACT_ACCESS_MODE")
            or cls.artifact_access_mode,
            s3_secret=os.environ.get("MLKUBE_S3_SECRET") or None,
            s3_endpoint_url=os.environ.get("MLKUBE_S3_ENDPOINT_URL") or None,
            allowed_uri_prefixes=tuple(
                p.strip()
                for p in os.environ.get("MLKUBE_ALLOWED_URI_PREFIXES", "").split(",")
                if p.strip()
            ),
            service_account=os.environ.get("MLKUBE_WORKLOAD_SERVICE_ACCOUNT") or None,
        )
