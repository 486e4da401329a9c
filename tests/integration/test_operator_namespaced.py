"""A namespaced install (watchNamespaces of plain names) reconciles at once: its operator may not
list namespaces, and with kopf's namespace scanning on it retried that list for about a minute
before serving the names given. Here the in-process operator runs as the chart's service account
with the chart's namespaced RBAC (cluster-scoped names of this run), and must answer a
Deployment within seconds of starting.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.config import kube_config

import mlkube.controller.main
from tests.cluster.fixtures import REPO_ROOT, KubeCluster
from tests.e2e.conftest import bin_dir
from tests.integration.fixtures import condition, create, eventually, start_operator, status_of

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
SERVICE_ACCOUNT = "mlkube-operator"
STARTED_WITHIN = 15.0
"""Seconds from the operator's start to its first status write (scanning on: about 55)."""

pytestmark = pytest.mark.usefixtures("crds")


def namespaced_rbac(namespace: str, suffix: str) -> list[dict[str, Any]]:
    """The chart's service account and RBAC for a release in `namespace` watching only it;
    cluster-scoped names get `suffix`."""
    done = subprocess.run(
        [
            str(bin_dir() / "helm"), "template", "mlkube", "charts/mlkube", "--namespace",
            namespace, "--set", f"watchNamespaces={{{namespace}}}",
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    picked = []
    for doc in yaml.safe_load_all(done.stdout):
        if not doc or doc["metadata"]["name"] != SERVICE_ACCOUNT:
            continue
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["name"] += suffix
            if doc["kind"] == "ClusterRoleBinding":
                doc["roleRef"]["name"] += suffix
        if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                           "ClusterRoleBinding"):  # fmt: skip
            picked.append(doc)
    return picked


@pytest.fixture
def service_account_kubeconfig(
    kubectl: Kubectl, kube_cluster: KubeCluster, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """(namespace, kubeconfig of the chart's operator service account there)."""
    suffix = f"-test-{uuid.uuid4().hex[:6]}"
    ns = f"mlkube-namespaced{suffix}"
    kubectl("create", "namespace", ns)
    objects = namespaced_rbac(ns, suffix)
    manifest = tmp_path / "rbac.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    try:
        kubectl("apply", "--server-side", "-f", str(manifest))
        token = kubectl("create", "token", SERVICE_ACCOUNT, "-n", ns).stdout.strip()
        config = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
        config["users"] = [{"name": SERVICE_ACCOUNT, "user": {"token": token}}]
        for context in config["contexts"]:
            context["context"]["user"] = SERVICE_ACCOUNT
        kubeconfig = tmp_path / "operator.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        denied = kubectl("--kubeconfig", str(kubeconfig), "get", "namespaces", check=False)
        assert denied.returncode != 0, "the namespaced operator must not list namespaces"
        yield ns, str(kubeconfig)
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
        for o in objects:
            if o["kind"].startswith("Cluster"):
                kubectl("delete", o["kind"].lower(), o["metadata"]["name"], "--ignore-not-found",
                        check=False)  # fmt: skip


def test_a_namespaced_operator_reconciles_within_seconds_of_starting(
    kube_cluster: KubeCluster,
    runtime_image: str,
    service_account_kubeconfig: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ns, kubeconfig = service_account_kubeconfig
    create(kube_cluster, ns, {
        "apiVersion": "mlkube.io/v1alpha1", "kind": "Deployment",
        "metadata": {"name": "ghost"}, "spec": {"modelVersion": "iris-v42"},
    })  # fmt: skip
    monkeypatch.setattr(mlkube.controller.main, "NAMESPACE_SCANNING", False)  # the chart's
    # the kubernetes client read KUBECONFIG when first imported: kopf and the operator's own
    # client would otherwise both log in as the admin
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    monkeypatch.setenv("KUBECONFIG", kubeconfig)  # start_operator's too; restored after
    started = time.monotonic()
    runner = start_operator(ns, runtime_image, kubeconfig)
    try:
        ready = eventually(
            lambda: condition(status_of(kube_cluster, ns, "deployments", "ghost"), "Ready"),
            60,
            "the namespaced operator's first status",
            interval=0.25,
        )
        elapsed = time.monotonic() - started
    finally:
        runner.__exit__(None, None, None)
    assert ready["reason"] == "ModelVersionNotFound"
    assert elapsed < STARTED_WITHIN, f"first reconcile {elapsed:.1f} s after the start"
    listing = [r.getMessage() for r in caplog.records if "/api/v1/namespaces " in r.getMessage()]
    assert listing == [], "kopf never tries to list namespaces"
