"""The in-process operator's /metrics on a real API server: no token 401, a service account's
token without mlkube-metrics-reader 403, with it 200 (TokenReview + SubjectAccessReview)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kopf.testing import KopfRunner

import mlkube.controller.main as operator_main
from tests.cluster.fixtures import REPO_ROOT, KubeCluster
from tests.e2e.conftest import bin_dir
from tests.integration.fixtures import start_operator

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
READER = "mlkube-metrics-reader"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, token: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read().decode()
            assert "mlkube_operator_queue_depth" in body
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except urllib.error.URLError:
        return -1  # not listening yet


@pytest.fixture
def metrics_port(
    kube_cluster: KubeCluster, operator_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[int]:
    port = free_port()
    monkeypatch.setattr(operator_main, "METRICS_PORT", port)
    monkeypatch.setattr(operator_main, "METRICS_SECURE", True)
    runner: KopfRunner = start_operator(operator_namespace, "unused", kube_cluster.kubeconfig)
    try:
        yield port
    finally:
        runner.__exit__(None, None, None)


def test_metrics_need_a_token_allowed_to_get_them(
    kubectl: Kubectl, operator_namespace: str, metrics_port: int, tmp_path: Path
) -> None:
    ns, suffix = operator_namespace, uuid.uuid4().hex[:6]
    rendered = subprocess.run(
        [str(bin_dir() / "helm"), "template", "mlkube", "charts/mlkube", "--show-only",
         "templates/rbac.yaml"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (role,) = (d for d in yaml.safe_load_all(rendered) if d and d["metadata"]["name"] == READER)
    reader = role["metadata"]["name"] = f"{READER}-test-{suffix}"
    (tmp_path / "role.json").write_text(json.dumps(role))
    try:
        for account in ("prometheus", "nosy"):
            kubectl("create", "serviceaccount", account, "-n", ns)
        kubectl("create", "-f", str(tmp_path / "role.json"))
        kubectl("create", "clusterrolebinding", reader, f"--clusterrole={reader}",
                f"--serviceaccount={ns}:prometheus")  # fmt: skip
        token = {
            account: kubectl("create", "token", account, "-n", ns).stdout.strip()
            for account in ("prometheus", "nosy")
        }
        deadline = time.monotonic() + 30
        while scrape(metrics_port, None) == -1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert scrape(metrics_port, None) == 401
        assert scrape(metrics_port, "not-a-token") == 401
        assert scrape(metrics_port, token["nosy"]) == 403
        status = scrape(metrics_port, token["prometheus"])
        while status != 200 and time.monotonic() < deadline:  # a refusal is cached for 10 s
            time.sleep(1)
            status = scrape(metrics_port, token["prometheus"])
        assert status == 200
    finally:
        kubectl("delete", "clusterrolebinding", reader, "--ignore-not-found", check=False)
        kubectl("delete", "clusterrole", reader, "--ignore-not-found", check=False)
