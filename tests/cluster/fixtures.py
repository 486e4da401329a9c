"""Shared Kubernetes cluster fixtures.

A pytest plugin: ``pytest_plugins = ["tests.cluster.fixtures"]``.

``kube_cluster`` (session): a real cluster, chosen in this order
  1. ``$KUBECONFIG`` if set (used as is, never started or stopped here);
  2. kind, when ``docker info`` works (``hack/cluster up`` drives kind);
  3. the local no-Docker cluster (``hack/cluster up``: containerd + Kubernetes v1.35.4 binaries).
If none can run, the fixture FAILS (never skips) and says what is missing. A cluster that this
fixture had to start is stopped again (``hack/cluster down``) at the end of the session, unless
``MLKUBE_KEEP_CLUSTER=1``. Cold start builds Kubernetes from source (~15 min): run
``hack/cluster up`` before pytest (CI does).

``namespace`` (function): a fresh namespace ``mlkube-test-<random>``, deleted afterwards.
``runtime_image``, ``operator_image`` (session): ``localhost/mlkube-<name>:<version>``, built and
loaded into the cluster by ``hack/build-images <name>`` (cached; rebuilt only when its inputs change).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK = REPO_ROOT / "hack"
LOCAL_K8S_VERSION = "v1.35.4"
EXPECTED_MINOR = "v1.35."


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=20, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def project_version() -> str:
    text = (REPO_ROOT / "pyproject.toml").read_text()
    in_project = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            in_project = s == "[project]"
        elif in_project and s.startswith("version") and "=" in s:
            return s.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("no [project] version in pyproject.toml")


@dataclass
class KubeCluster:
    """A reachable cluster: its kubeconfig, which backend runs it, and API clients."""

    kubeconfig: str
    backend: str  # "kubeconfig" | "kind" | "local"
    api_client: Any
    started_here: bool = False
    _apis: dict[str, Any] = field(default_factory=dict)

    def _api(self, name: str) -> Any:
        if name not in self._apis:
            from kubernetes import client

            self._apis[name] = getattr(client, name)(self.api_client)
        return self._apis[name]

    @property
    def core(self) -> Any:
        return self._api("CoreV1Api")

    @property
    def batch(self) -> Any:
        return self._api("BatchV1Api")

    @property
    def apps(self) -> Any:
        return self._api("AppsV1Api")

    @property
    def storage(self) -> Any:
        return self._api("StorageV1Api")

    @property
    def custom(self) -> Any:
        return self._api("CustomObjectsApi")

    def version(self) -> str:
        return str(self._api("VersionApi").get_code().git_version)

    @property
    def expected_version_prefix(self) -> str:
        return LOCAL_K8S_VERSION if self.backend == "local" else EXPECTED_MINOR


def _run_hack(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HACK / args[0]), *args[1:]],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _fail_hack(what: str, proc: subprocess.CompletedProcess[str]) -> None:
    tail = "\n".join((proc.stderr or "").splitlines()[-40:])
    pytest.fail(
        f"{what} failed (exit {proc.returncode}). Last output:\n{tail}\n"
        "Component logs: ~/.cache/mlkube/cluster/logs (local backend).",
        pytrace=False,
    )


def _missing_for_local() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the local cluster runs containerd, kubelet and iptables)")
    if shutil.which("apt-get") is None and shutil.which("containerd") is None:
        missing.append("containerd (and apt-get to install it)")
    bin_dir = Path(
        os.environ.get("MLKUBE_BIN_DIR", Path.home() / f".cache/mlkube/k8s-{LOCAL_K8S_VERSION}/bin")
    )
    if not (bin_dir / "kube-apiserver").exists() and shutil.which("go") is None:
        missing.append(f"Kubernetes binaries in {bin_dir} or a Go toolchain to build them")
    return missing


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    try:
        from kubernetes import config
    except ImportError:
        pytest.fail(
            "the 'kubernetes' Python client is missing: pip install -e '.[operator,dev]'",
            pytrace=False,
        )

    env = dict(os.environ)
    started_here = False
    backend: str
    if os.environ.get("KUBECONFIG"):
        backend = "kubeconfig"
        kubeconfig = os.environ["KUBECONFIG"].split(os.pathsep)[0]
    else:
        backend = "kind" if _docker_works() else "local"
        env["MLKUBE_CLUSTER_BACKEND"] = backend
        if backend == "local" and (missing := _missing_for_local()):
            pytest.fail(
                "no cluster available: $KUBECONFIG is unset, Docker does not answer, and the "
                "local cluster needs: " + "; ".join(missing),
                pytrace=False,
            )
        status = _run_hack(["cluster", "status"], env)
        started_here = status.returncode != 0
        proc = _run_hack(["cluster", "up"], env)
        if proc.returncode != 0:
            _fail_hack(f"hack/cluster up ({backend})", proc)
        kubeconfig = proc.stdout.strip().splitlines()[-1]

    api_client = config.new_client_from_config(config_file=kubeconfig)
    cluster = KubeCluster(
        kubeconfig=kubeconfig, backend=backend, api_client=api_client, started_here=started_here
    )
    try:
        cluster.version()
    except Exception as exc:
        pytest.fail(f"cluster from {kubeconfig} ({backend}) is not reachable: {exc}", pytrace=False)

    old_kubeconfig = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = kubeconfig  # for kopf / kubectl used by later tests
    try:
        yield cluster
    finally:
        if old_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_kubeconfig
        api_client.close()
        if started_here and os.environ.get("MLKUBE_KEEP_CLUSTER") != "1":
            _run_hack(["cluster", "down"], env)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 1.0
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


@pytest.fixture
def namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    from kubernetes import client

    name = f"mlkube-test-{uuid.uuid4().hex[:8]}"
    kube_cluster.core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"mlkube.io/test": "true"})
        )
    )
    # pods can only be created once the service-account controller made "default"
    wait_until(
        lambda: kube_cluster.core.read_namespaced_service_account("default", name),
        60,
        f"serviceaccount default in {name}",
    )
    try:
        yield name
    finally:
        try:
            kube_cluster.core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException as exc:
            if exc.status != 404:
                raise


def built_image(kube_cluster: KubeCluster, name: str) -> str:
    """``localhost/mlkube-<name>:<version>`` (or ``$MLKUBE_<NAME>_IMAGE``), built and loaded."""
    ref = os.environ.get(
        f"MLKUBE_{name.upper()}_IMAGE", f"localhost/mlkube-{name}:{project_version()}"
    )
    if kube_cluster.backend == "kubeconfig" or os.environ.get("MLKUBE_SKIP_IMAGE_BUILD") == "1":
        return ref  # an external cluster must already have it
    env = dict(os.environ, MLKUBE_CLUSTER_BACKEND=kube_cluster.backend)
    proc = _run_hack(["build-images", name], env)
    if proc.returncode != 0:
        _fail_hack(f"hack/build-images {name}", proc)
    return ref


@pytest.fixture(scope="session")
def runtime_image(kube_cluster: KubeCluster) -> str:
    return built_image(kube_cluster, "runtime")


@pytest.fixture(scope="session")
def operator_image(kube_cluster: KubeCluster) -> str:
    return built_image(kube_cluster, "operator")


def pod_logs(kube_cluster: KubeCluster, namespace: str, name: str) -> str:
    return str(kube_cluster.core.read_namespaced_pod_log(name, namespace))


def wait_pod_phase(
    kube_cluster: KubeCluster, namespace: str, name: str, phases: set[str], timeout: float
) -> Any:
    """Wait until the pod is in one of ``phases``; fail early (with logs) if it Failed."""

    def check() -> Any:
        pod = kube_cluster.core.read_namespaced_pod(name, namespace)
        phase = pod.status.phase
        if phase in phases:
            return pod
        if phase == "Failed":
            try:
                logs = pod_logs(kube_cluster, namespace, name)
            except Exception:
                logs = "<no logs>"
            pytest.fail(f"pod {namespace}/{name} failed: {pod.status}\nlogs:\n{logs}")
        waiting = [
            cs.state.waiting.reason
            for cs in (pod.status.container_statuses or [])
            if cs.state and cs.state.waiting and cs.state.waiting.reason
        ]
        bad = {"ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "CreateContainerError"}
        if bad.intersection(waiting):
            pytest.fail(f"pod {namespace}/{name} cannot start: {waiting}: {pod.status}")
        return None

    return wait_until(check, timeout, f"pod {namespace}/{name} in {sorted(phases)}")
