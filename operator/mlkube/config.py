"""Operator-wide settings, read once from the environment the Helm chart sets."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from mlkube import __version__
from mlkube.tenancy import directory

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
    """The ServiceAccount of workload pods (IRSA / Workload Identity); None: the namespace's default."""
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    """Secrets in each workload namespace for pulling the runtime image from a private registry."""
    workload_run_as_user: int | None = 65532
    """The uid (and gid, fsGroup) of workload pods; None lets the platform choose one, as
    OpenShift's restricted SCC does."""
    scrape_timeout_seconds: float = 5.0
    """A canary analysis' scrape of a Deployment's pods is whole within this or inconclusive
    (Prometheus' scrape_timeout, default 10 s; shorter here, as a reconcile waits on it)."""
    scrape_max_bytes: int = 4 << 20
    """A pod's /metrics larger than this is cut off (Prometheus' body_size_limit)."""
    leader_election_lease: str | None = None
    """`<namespace>/<name>` of the Lease that picks the one replica that reconciles; None: no
    election (a single process, as the integration tests run it)."""
    inference_log_max_bytes: int = 512 << 20
    """Each model version's inference log keeps at most this many bytes (its oldest segments
    go first), so one flooded model cannot fill its namespace's store."""
    network_policy: bool = True
    """Write a NetworkPolicy per Deployment so that only its own namespace, its gateway's and
    the API server reach its pods (a Deployment's spec may turn its own off)."""
    network_policy_namespaces: tuple[str, ...] = ()
    """Namespaces every Deployment's pods take connections from (a monitoring namespace)."""
    api_server_cidrs: tuple[str, ...] = ()
    """Where the API server's service and pod proxy connect from when it runs off the pods'
    node (a control plane's own network); empty: nothing more (a NetworkPolicy implementation
    lets a pod's own node in, which is all a single-node cluster needs)."""

    def __post_init__(self) -> None:
        """Refuse a prefix that would open every namespace's store to every namespace.

        Raises:
            ValueError: an allowed prefix contains the artifact root or lies inside it.
        """
        if self.scrape_timeout_seconds <= 0 or self.scrape_max_bytes <= 0:
            raise ValueError(
                "MLKUBE_SCRAPE_TIMEOUT_SECONDS and MLKUBE_SCRAPE_MAX_BYTES must be > 0"
            )
        if self.inference_log_max_bytes < 1:
            raise ValueError("MLKUBE_INFERENCE_LOG_MAX_BYTES must be > 0")
        if self.leader_election_lease is not None and self.leader_election_lease.count("/") != 1:
            raise ValueError(
                f"MLKUBE_LEADER_ELECTION_LEASE={self.leader_election_lease}: "
                "expected <namespace>/<name>"
            )
        for cidr in self.api_server_cidrs:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as e:
                raise ValueError(f"MLKUBE_API_SERVER_CIDRS: {e}") from None
        root = directory(self.artifact_root)
        for prefix in self.allowed_uri_prefixes:
            shared = directory(prefix)
            if root.startswith(shared) or shared.startswith(root):
                raise ValueError(
                    f"allowed URI prefix {prefix} overlaps the artifact root {self.artifact_root}: "
                    "list only prefixes outside the root (MLKUBE_ALLOWED_URI_PREFIXES)"
                )

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
            # a storage key only where there is object storage: PVC mode asks for no Secret
            s3_secret=(os.environ.get("MLKUBE_S3_SECRET") or None) if object_storage else None,
            s3_endpoint_url=os.environ.get("MLKUBE_S3_ENDPOINT_URL") or None,
            allowed_uri_prefixes=_names(os.environ.get("MLKUBE_ALLOWED_URI_PREFIXES", "")),
            service_account=os.environ.get("MLKUBE_WORKLOAD_SERVICE_ACCOUNT") or None,
            image_pull_policy=os.environ.get("MLKUBE_IMAGE_PULL_POLICY") or cls.image_pull_policy,
            image_pull_secrets=_names(os.environ.get("MLKUBE_IMAGE_PULL_SECRETS", "")),
            workload_run_as_user=_uid(os.environ.get("MLKUBE_WORKLOAD_RUN_AS_USER", "65532")),
            scrape_timeout_seconds=float(
                os.environ.get("MLKUBE_SCRAPE_TIMEOUT_SECONDS") or cls.scrape_timeout_seconds
            ),
            scrape_max_bytes=int(os.environ.get("MLKUBE_SCRAPE_MAX_BYTES") or cls.scrape_max_bytes),
            leader_election_lease=os.environ.get("MLKUBE_LEADER_ELECTION_LEASE") or None,
            inference_log_max_bytes=_bytes(
                os.environ.get("MLKUBE_INFERENCE_LOG_MAX_BYTES") or str(cls.inference_log_max_bytes)
            ),
            network_policy=os.environ.get("MLKUBE_NETWORK_POLICY", "true").lower() != "false",
            network_policy_namespaces=_names(
                os.environ.get("MLKUBE_NETWORK_POLICY_NAMESPACES", "")
            ),
            api_server_cidrs=_names(os.environ.get("MLKUBE_API_SERVER_CIDRS", "")),
        )


def _names(value: str) -> tuple[str, ...]:
    """A comma-separated list, as the chart joins one."""
    return tuple(p.strip() for p in value.split(",") if p.strip())


_BINARY_SUFFIXES = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def _bytes(value: str) -> int:
    """A byte count as the chart writes it: digits, optionally Ki, Mi, Gi or Ti.

    Raises:
        ValueError: anything else.
    """
    number = value.strip().rstrip("KMGTi")
    suffix = value.strip()[len(number) :]
    if not number.isdigit() or suffix not in _BINARY_SUFFIXES:
        raise ValueError(f"MLKUBE_INFERENCE_LOG_MAX_BYTES={value}: expected e.g. 512Mi")
    return int(number) * _BINARY_SUFFIXES[suffix]


def _uid(value: str) -> int | None:
    return int(value) if value.strip() else None
