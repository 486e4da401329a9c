"""Pieces every child manifest shares: names, labels, owner references, a restricted pod."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from mlkube.api.common import API_VERSION, GROUP, ApiModel, Body
from mlkube.api.common import Resources as ResourcesModel
from mlkube.config import ARTIFACT_MOUNT_PATH, OperatorConfig
from mlkube.contract import OWNER_LABELS

Manifest = Body
"""A child as the builders make it, for server-side apply or create."""

MAX_NAME = 63
MANAGED_BY = {"app.kubernetes.io/managed-by": "mlkube"}
SPEC_ENV = "MLKUBE_SPEC"


@dataclass(frozen=True)
class Owner:
    """The custom resource a child belongs to."""

    kind: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, kind: str, body: Body) -> Owner:
        meta = body["metadata"]
        return cls(kind=kind, name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    def reference(self) -> Manifest:
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def owner_of(child: Manifest) -> tuple[str, str] | None:
    """(kind, name) of the mlkube object a child belongs to: its controller reference when that
    is one of ours (every child the builders make has one), else the first of OWNER_LABELS it
    carries; None for anything else."""
    meta = child.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and str(ref.get("apiVersion")).startswith(f"{GROUP}/"):
            return str(ref["kind"]), str(ref["name"])
    labels = meta.get("labels") or {}
    return next(
        ((kind, labels[label]) for label, kind in OWNER_LABELS.items() if labels.get(label)), None
    )


def child_name(base: str, suffix: str, limit: int = MAX_NAME) -> str:
    """`<base>-<suffix>`, shortened with a hash when over `limit` characters: deterministic,
    unique."""
    name = f"{base}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-')}-{digest}-{suffix}"


def metadata(name: str, owner: Owner, labels: dict[str, str]) -> Manifest:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**MANAGED_BY, **labels},
        "ownerReferences": [owner.reference()],
    }


def restricted_security_context() -> Manifest:
    """The `restricted` Pod Security Standard, so the pods run in locked-down namespaces."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(config: OperatorConfig) -> Manifest:
    """Non-root always; a fixed uid unless the platform assigns one (OpenShift)."""
    context: Manifest = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    uid = config.workload_run_as_user
    if uid is not None:
        context.update(runAsUser=uid, runAsGroup=uid, fsGroup=uid)
    return context


def resources(spec: ResourcesModel | None, default_requests: dict[str, str]) -> Manifest:
    if spec is None:
        return {"requests": dict(default_requests)}
    return spec.to_api()


def spec_env(spec: ApiModel, exclude: set[str] | None = None) -> Manifest:
    """The custom resource's spec, handed to the runtime as it was applied (less `exclude`: fields
    that may change while the pod template must not, such as `suspend`)."""
    value = {k: v for k, v in spec.to_api().items() if k not in (exclude or set())}
    return {"name": SPEC_ENV, "value": json.dumps(value, sort_keys=True)}


def storage_env(config: OperatorConfig) -> list[Manifest]:
    env: list[Manifest] = [{"name": "MLKUBE_ARTIFACT_ROOT", "value": config.artifact_root}]
    if config.s3_endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": config.s3_endpoint_url})
    return env


def storage_env_from(config: OperatorConfig) -> list[Manifest]:
    return [{"secretRef": {"name": config.s3_secret}}] if config.s3_secret else []


def volumes(config: OperatorConfig) -> tuple[list[Manifest], list[Manifest]]:
    """Pod volumes and container mounts: a writable /tmp (read-only root) and the artifact PVC."""
    pod_volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]
    if config.artifact_pvc:
        pod_volumes.append(
            {"name": "artifacts", "persistentVolumeClaim": {"claimName": config.artifact_pvc}}
        )
        mounts.append({"name": "artifacts", "mountPath": ARTIFACT_MOUNT_PATH})
    return pod_volumes, mounts


def runtime_container(
    name: str,
    image: str,
    args: list[str],
    env: list[Manifest],
    resources_: Manifest,
    config: OperatorConfig,
    store: bool = True,
) -> Manifest:
    """A run-to-completion `mlkube-runtime` container that reports through its termination message;
    `store`: it reads or writes the artifact store (its env and credentials)."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["mlkube-runtime"],
        "args": args,
        "env": [*env, *(storage_env(config) if store else []), {"name": "HOME", "value": "/tmp"}],
        "envFrom": storage_env_from(config) if store else [],
        "resources": resources_,
        "securityContext": restricted_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def pod_spec(
    container: Manifest, config: OperatorConfig, restart_policy: str, store: bool = True
) -> Manifest:
    """A pod with a writable /tmp and, when it uses the `store`, the artifact volume."""
    pod_volumes, mounts = volumes(config)
    if not store:
        pod_volumes, mounts = pod_volumes[:1], mounts[:1]  # /tmp alone
    spec: Manifest = {
        "restartPolicy": restart_policy,
        "securityContext": pod_security_context(config),
        "containers": [{**container, "volumeMounts": mounts}],
        "volumes": pod_volumes,
        "enableServiceLinks": False,
        # workload pods never talk to the API server: no token to steal from them
        "automountServiceAccountToken": False,
    }
    if config.service_account:
        spec["serviceAccountName"] = config.service_account
    if config.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in config.image_pull_secrets]
    return spec


def artifact_pvc(namespace: str, config: OperatorConfig) -> Manifest | None:
    """The namespace's artifact claim; not owned by any one object, so deleting one keeps data."""
    if not config.artifact_pvc:
        return None
    spec: Manifest = {
        "accessModes": [config.artifact_access_mode],
        "resources": {"requests": {"storage": config.artifact_storage_size}},
    }
    if config.artifact_storage_class:
        spec["storageClassName"] = config.artifact_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": config.artifact_pvc,
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
        },
        "spec": spec,
    }
