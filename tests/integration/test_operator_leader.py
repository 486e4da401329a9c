"""One operator at a time (issue 16, item 10), on the real cluster: two operator processes share
a Lease; only its holder reconciles, and when the holder stops (SIGTERM: it releases the Lease) or
dies (SIGKILL: the Lease expires) the other takes over, and a TrainingJob created meanwhile gets
exactly one Job, from the new leader.

Each process names a different runtime image, so a Job's image says which operator wrote it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.fixtures import REPO_ROOT, KubeCluster
from tests.integration.fixtures import GROUP, VERSION, create, eventually

pytestmark = pytest.mark.usefixtures("crds")

LEASE = "mlkube-operator"


class Operators:
    """Operator processes (`kopf run`, as the image runs it) by identity."""

    def __init__(self, namespace: str, kubeconfig: str, logs: Path) -> None:
        self.namespace, self.kubeconfig, self.logs = namespace, kubeconfig, logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, identity: str) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "POD_ID": identity,
            "MLKUBE_LEADER_ELECTION_LEASE": f"{self.namespace}/{LEASE}",
            "MLKUBE_RUNTIME_IMAGE": f"localhost/mlkube-runtime:{identity}",
            "MLKUBE_METRICS_PORT": "0",
        }
        command = ["run", "--standalone", "--namespace", self.namespace]
        with (self.logs / f"{identity}.log").open("wb") as log:
            self.processes[identity] = subprocess.Popen(
                [sys.executable, "-m", "kopf", *command, "-m", "mlkube.controller.main"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self, identity: str, how: signal.Signals) -> float:
        """Signal it; the moment it ended (monotonic)."""
        process = self.processes.pop(identity)
        process.send_signal(how)
        process.wait(30)
        return time.monotonic()

    def stop_all(self) -> None:
        for identity in list(self.processes):
            self.stop(identity, signal.SIGKILL)


@pytest.fixture
def operators(
    kube_cluster: KubeCluster, operator_namespace: str, tmp_path: Path
) -> Iterator[Operators]:
    running = Operators(operator_namespace, kube_cluster.kubeconfig, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def holder(kube: KubeCluster, ns: str) -> str | None:
    api = kube._api("CoordinationV1Api")
    try:
        lease = api.read_namespaced_lease(LEASE, ns)
    except Exception:
        return None
    return lease.spec.holder_identity or None


def train(kube: KubeCluster, ns: str, name: str) -> None:
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"model": "iris", "dataset": {"uri": "builtin:iris"}, "suspend": True,
                 "estimator": {"className": "sklearn.naive_bayes.GaussianNB"}},
    })  # fmt: skip


def jobs_of(kube: KubeCluster, ns: str, name: str) -> list[Any]:
    selector = f"mlkube.io/trainingjob={name}"
    return list(kube.batch.list_namespaced_job(ns, label_selector=selector).items)


def written_by(kube: KubeCluster, ns: str, name: str, timeout: float) -> str:
    """The identity of the one operator that created the TrainingJob's Job."""
    (job,) = eventually(lambda: jobs_of(kube, ns, name), timeout, f"the Job of {name}", 0.2)
    return str(job.spec.template.spec.containers[0].image).rsplit(":", 1)[1]


@pytest.mark.timeout(180)
def test_one_leader_and_a_standby_that_takes_over(
    kube_cluster: KubeCluster, operator_namespace: str, operators: Operators
) -> None:
    kube, ns = kube_cluster, operator_namespace
    operators.start("op-a")
    operators.start("op-b")
    first = eventually(lambda: holder(kube, ns), 60, "a leader")
    standby = "op-b" if first == "op-a" else "op-a"
    train(kube, ns, "t-first")
    assert written_by(kube, ns, "t-first", 30) == first
    time.sleep(4)  # both have watched it long enough to have acted if they could
    assert len(jobs_of(kube, ns, "t-first")) == 1
    assert holder(kube, ns) == first

    # a stop (kubectl delete pod, a rolling update): the leader hands its Lease over
    stopped = operators.stop(first, signal.SIGTERM)
    train(kube, ns, "t-after-stop")
    assert written_by(kube, ns, "t-after-stop", 20) == standby
    handed_over = time.monotonic() - stopped
    assert holder(kube, ns) == standby

    # a death (OOM kill, a lost node): the Lease must expire first
    operators.start("op-c")
    time.sleep(4)  # op-c has seen the Lease renewed: a standby, not a leader
    assert holder(kube, ns) == standby
    killed = operators.stop(standby, signal.SIGKILL)
    train(kube, ns, "t-after-kill")
    assert written_by(kube, ns, "t-after-kill", 30) == "op-c"
    taken_over = time.monotonic() - killed
    print(
        f"hand-over: after SIGTERM {handed_over:.1f} s, after SIGKILL {taken_over:.1f} s",
        file=sys.__stderr__,
    )
    assert handed_over < 5, "a released Lease is taken at the standby's next look"
    assert taken_over < 15, "lease 10 s, seen by the standby within 1.5 s retry periods"
    for name in ("t-first", "t-after-stop", "t-after-kill"):
        assert len(jobs_of(kube, ns, name)) == 1, f"{name} has one Job"
