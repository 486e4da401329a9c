"""Fixtures for tests against a real API server: the CRDs installed, a kubectl of the right version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner
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
        done = subprocess.run(
            [kubectl_binary(), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and done.returncode != 0:  # kubectl's own words, not only its exit code
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr}"
            )
        return done

    return run


@pytest.fixture(scope="session")
def crds(
    kube_cluster: KubeCluster, kubectl: Callable[..., subprocess.CompletedProcess[str]]
) -> Iterator[None]:
    """The generated CRDs from crds/, applied server-side and Established. A CRD still being
    deleted (Terminating) when this runs is gone a little later: apply again until each one is
    Established, for up to three minutes."""
    deadline = time.monotonic() + 180
    while True:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        waits = [
            kubectl(
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                f"crd/{kind.crd_name}",
                check=False,
            )
            for kind in KINDS
        ]
        failed = [w for w in waits if w.returncode != 0]
        if not failed:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"CRDs not Established: {failed[0].stderr}")
        time.sleep(5)
    yield


GATEWAY_API_VERSION = "v1.4.1"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"


@pytest.fixture(scope="session")
def gateway_api_crds(
    kube_cluster: KubeCluster, kubectl: Callable[..., subprocess.CompletedProcess[str]]
) -> Iterator[None]:
    """The Gateway API's standard-channel CRDs (`hack/gateway-api-crds` downloads them once into
    ~/.cache/mlkube), applied server-side and Established. No gateway controller runs: tests read
    the HTTPRoutes the operator writes. A cluster that already has another version or channel
    (a $KUBECONFIG with a real gateway) keeps its own."""
    found = kubectl(
        "get", f"crd/httproutes.{GATEWAY_API_GROUP}", "-o", "jsonpath={.metadata.annotations}",
        check=False,
    )  # fmt: skip
    if found.returncode == 0:
        annotations = json.loads(found.stdout or "{}")
        installed = (
            annotations.get(f"{GATEWAY_API_GROUP}/bundle-version"),
            annotations.get(f"{GATEWAY_API_GROUP}/channel"),
        )
        if installed != (GATEWAY_API_VERSION, "standard"):
            yield
            return
    script = subprocess.run(
        [str(ROOT / "hack/gateway-api-crds")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if script.returncode != 0:
        pytest.fail(f"hack/gateway-api-crds failed:\n{script.stderr}", pytrace=False)
    folder = script.stdout.strip().splitlines()[-1]
    kubectl("apply", "--server-side", "--force-conflicts", "-f", folder)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", folder)
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
        return str(json.loads(e.body)["message"])
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


@pytest.fixture(scope="module")
def operator_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    from kubernetes import client

    name = f"mlkube-op-{uuid.uuid4().hex[:6]}"
    kube_cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    kube_cluster.core.delete_namespace(name)


def start_operator(namespace: str, image: str, kubeconfig: str) -> KopfRunner:
    os.environ["KUBECONFIG"] = kubeconfig
    os.environ["MLKUBE_RUNTIME_IMAGE"] = image
    os.environ["MLKUBE_METRICS_PORT"] = "0"
    runner = KopfRunner(
        ["run", "--standalone", "--namespace", namespace, "-m", "mlkube.controller.main"]
    )
    runner.__enter__()
    return runner


@pytest.fixture(scope="module")
def operator(
    operator_namespace: str, runtime_image: str, kube_cluster: KubeCluster
) -> Iterator[dict[str, KopfRunner]]:
    holder = {"runner": start_operator(operator_namespace, runtime_image, kube_cluster.kubeconfig)}
    yield holder
    holder["runner"].__exit__(None, None, None)


def get(kube: KubeCluster, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return result


def status_of(kube: KubeCluster, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return (get(kube, namespace, plural, name) or {}).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def training_finished(kube: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    """The TrainingJob's status once it Succeeded or Failed."""
    return dict(
        eventually(
            lambda: (
                (s := status_of(kube, namespace, "trainingjobs", name)).get("phase")
                in ("Succeeded", "Failed")
                and s
            ),
            300,
            f"TrainingJob {name} to finish",
            interval=2,
        )
    )
