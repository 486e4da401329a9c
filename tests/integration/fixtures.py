"""Fixtures for tests against a real API server: the CRDs installed, a kubectl of the right version."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from mlkube.api.crdgen import KINDS
from tests.cluster.fixtures import KubeCluster

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "mlkube.io", "v1alpha1"
PLURAL = {k.kind: k.plural for k in KINDS}


def kubectl_binary() -> str:
    cached = Path.home() / ".cache/mlkube/k8s-v1.35.4/bin/kubectl"
    found = shutil.which("kubectl")
    return str(cached) if cached.exists() else found or "kubectl"


@pytest.fixture(scope="session")
def kubectl(kube_cluster: KubeCluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": kube_cluster.kubeconfig}
        return subprocess.run(
            [kubectl_binary(), *args],
            env=env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    return run


@pytest.fixture(scope="session")
def crds(
    kube_cluster: KubeCluster, kubectl: Callable[..., subprocess.CompletedProcess[str]]
) -> Iterator[None]:
    """The generated CRDs from crds/, applied server-side and Established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    for kind in KINDS:
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{kind.crd_name}")
    yield


def create(
    kube_cluster: KubeCluster, namespace: str, manifest: dict[str, Any], dry_run: bool = False
) -> dict[str, Any]:
    result: dict[str, Any] = kube_cluster.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL[manifest["kind"]],
        manifest,
        dry_run="All" if dry_run else None,
    )
    return result


def rejection(kube_cluster: KubeCluster, namespace: str, manifest: dict[str, Any]) -> str:
    """The API server's message refusing `manifest` (server-side dry run); fails if accepted."""
    try:
        create(kube_cluster, namespace, manifest, dry_run=True)
    except ApiException as e:
        assert e.status == 422, e.body
        return str(e.body)
    raise AssertionError(f"the API server accepted {manifest}")


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
