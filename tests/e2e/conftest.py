"""The e2e tier: mlkube installed the way users install it, by the Helm chart, on a real cluster.

``helm`` runs the helm binary the test bed built (``hack/build-binaries.sh``); ``retag`` gives an
image in the cluster a second tag (a "new release"); ``timings`` collects how long each act took
and prints them at the end of the run, so CI's log says where the time went.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster.fixtures import REPO_ROOT, KubeCluster

HELM_TIMEOUT = 600
_timings: list[tuple[str, float]] = []


def bin_dir() -> Path:
    out = subprocess.run(
        [str(REPO_ROOT / "hack/build-binaries.sh"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm(kube_cluster: KubeCluster) -> Helm:
    binary = bin_dir() / "helm"
    if not binary.exists():
        pytest.fail(f"no helm at {binary}: run hack/build-binaries.sh", pytrace=False)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": kube_cluster.kubeconfig}
        proc = subprocess.run(
            [str(binary), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=HELM_TIMEOUT,
        )
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


def retag(kube_cluster: KubeCluster, source: str, target: str) -> str:
    """A second tag of an image already in the cluster: a 'new release' without a registry."""
    env = dict(os.environ, MLKUBE_CLUSTER_BACKEND=kube_cluster.backend)
    proc = subprocess.run(
        [str(REPO_ROOT / "hack/image-tag"), source, target],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return target


@contextmanager
def timed(what: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    _timings.append((what, time.monotonic() - start))


@pytest.fixture(scope="session")
def timings() -> Callable[[str], object]:
    return timed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _timings:
        return
    terminalreporter.section("e2e timings")
    for what, seconds in _timings:
        terminalreporter.write_line(f"{seconds:7.1f} s  {what}")
