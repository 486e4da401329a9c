"""The registry's record on the real cluster (issue 18 item 5): a promotion and a rollback asked
for with `mlkube` are kept in the Deployment's history (who asked, why) and in both ModelVersions'
status (where each serves, its alias, its own history), across an operator restart between the
two without an entry written twice or lost; `kubectl get mlmv` shows the serving role; a retry
goes on from there; a deleted Deployment's spans stay on its versions, closed."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from kopf.testing import KopfRunner

from mlkube.cli import _act, _history, whoami
from mlkube.controller.kube import Cluster
from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import (
    GROUP,
    VERSION,
    condition,
    create,
    eventually,
    start_operator,
    status_of,
    training_finished,
)

pytestmark = pytest.mark.usefixtures("crds")
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def trained(kube: KubeCluster, ns: str, name: str) -> str:
    spec = {
        "model": "iris",
        "dataset": {"uri": "builtin:iris"},
        "estimator": {"className": "sklearn.naive_bayes.GaussianNB"},
        "approvalPolicy": "AutoApproveOnGates",
    }
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": spec,
    })  # fmt: skip
    done = training_finished(kube, ns, name)
    assert done["phase"] == "Succeeded", done
    version = str(done["modelVersion"])
    eventually(
        lambda: (
            condition(status_of(kube, ns, "modelversions", version), "Ready").get("status")
            == "True"
        ),
        120,
        f"{version} to be verified",
    )
    return version


def spans(history: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (e["version"], e["role"], e["reason"], e["by"], e.get("endReason"), e.get("endedBy"))
        for e in history
    ]


def record(kube: KubeCluster, ns: str, version: str) -> tuple[Any, ...]:
    """A ModelVersion's record: (role, servingIn as (deployment, role), aliases, history)."""
    s = status_of(kube, ns, "modelversions", version)
    return (
        s.get("role"),
        [(x["deployment"], x["role"]) for x in s.get("servingIn", [])],
        [(a["name"], a["deployment"]) for a in s.get("aliases", [])],
        [(e["deployment"], e["role"], e["reason"], e.get("endReason")) for e in s.get("history", [])],
    )  # fmt: skip


def records_show(
    kube: KubeCluster, ns: str, expected: dict[str, tuple[Any, ...]], what: str
) -> None:
    """Wait until each version's record starts with its expected fields; fail showing them."""
    deadline, seen = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        seen = {v: record(kube, ns, v)[: len(fields)] for v, fields in expected.items()}
        if seen == expected:
            return
        time.sleep(1)
    pytest.fail(f"timed out after 30s waiting for {what}: {seen} instead of {expected}")


STABLE, CANARY = ("Stable", [("hist", "Stable")], [("champion", "hist")]), (
    "Canary", [("hist", "Canary")], [("challenger", "hist")]
)  # fmt: skip


@pytest.mark.timeout(900)
def test_promotion_and_rollback_are_recorded_and_survive_a_restart(
    kube_cluster: KubeCluster,
    operator_namespace: str,
    operator: dict[str, KopfRunner],
    kubectl: Kubectl,
) -> None:
    kube, ns = kube_cluster, operator_namespace
    cluster = Cluster(kube.kubeconfig)
    me = whoami(cluster)
    args = argparse.Namespace(namespace=ns, name="hist")
    v1, v2 = trained(kube, ns, "hist-a"), trained(kube, ns, "hist-b")

    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": "hist"},
        "spec": {"modelVersion": v1, "replicas": 1,
                 "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]}}},
    })  # fmt: skip
    eventually(
        lambda: status_of(kube, ns, "deployments", "hist").get("phase") == "Healthy",
        180,
        f"the Deployment to serve {v1}",
    )
    records_show(kube, ns, {v1: STABLE}, f"{v1} to say it is hist's champion")

    # -- a canary, promoted by request ------------------------------------------------------
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "deployments", "hist", {"spec": {"modelVersion": v2}}
    )
    eventually(
        lambda: status_of(kube, ns, "deployments", "hist").get("phase") == "Paused",
        180,
        f"{v2}'s canary to reach the pause",
    )
    records_show(kube, ns, {v2: CANARY}, f"{v2} to say it is hist's challenger")
    assert _act(cluster, args, "promote-full") == 0
    promoted = eventually(
        lambda: (s := status_of(kube, ns, "deployments", "hist")).get("stableVersion") == v2 and s,
        60,
        f"{v2} to be promoted",
    )
    assert spans(promoted["history"]) == [
        (v1, "Stable", "Initial", "operator", "Replaced", me),
        (v2, "Canary", "CanaryStarted", "operator", "Promoted", me),
        (v2, "Stable", "Promoted", me, None, None),
    ]
    records_show(
        kube, ns, {v2: STABLE, v1: ("Previous", [("hist", "Previous")], [])},
        f"{v2} to be the champion, {v1} the warm previous",
    )  # fmt: skip

    # -- the operator restarts while v1 is warm; then a rollback by request ------------------
    operator["runner"].__exit__(None, None, None)
    operator["runner"] = start_operator(ns, os.environ["MLKUBE_RUNTIME_IMAGE"], kube.kubeconfig)
    assert _act(cluster, args, "rollback") == 0
    rolled_back = eventually(
        lambda: (s := status_of(kube, ns, "deployments", "hist")).get("stableVersion") == v1 and s,
        60,
        f"the rollback to {v1}",
    )
    history = rolled_back["history"]
    assert len(history) == 4, "nothing recorded twice or lost across the restart"
    assert history[:2] == promoted["history"][:2]
    assert history[2] == {
        **promoted["history"][2],
        "to": history[3]["from"],
        "endReason": "RolledBack",
        "endedBy": me,
    }
    assert spans(history)[3] == (v1, "Stable", "RolledBack", me, None, None)
    expected: dict[str, tuple[Any, ...]] = {
        v1: ("Stable", [("hist", "Stable")], [("champion", "hist")], [
            ("hist", "Stable", "Initial", "Replaced"), ("hist", "Stable", "RolledBack", None),
        ]),
        v2: (None, [], [], [
            ("hist", "Canary", "CanaryStarted", "Promoted"), ("hist", "Stable", "Promoted", "RolledBack"),
        ]),
    }  # fmt: skip
    records_show(kube, ns, expected, "both ModelVersions to record the promotion and the rollback")
    listed = kubectl("get", "modelversions.mlkube.io", "-n", ns).stdout.splitlines()
    assert listed[0].split()[:7] == [
        "NAME",
        "MODEL",
        "VERSION",
        "READY",
        "APPROVED",
        "ROLE",
        "STAGE",
    ]
    start, end = listed[0].index("ROLE"), listed[0].index("STAGE")
    roles = {line.split()[0]: line[start:end].strip() for line in listed[1:]}
    assert roles == {v1: "Stable", v2: ""}, listed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _history(cluster, argparse.Namespace(namespace=ns, name="hist")) == 0
    assert [line.split()[:2] for line in out.getvalue().splitlines()[1:]] == [
        [v1, "Stable"], [v2, "Canary"], [v2, "Stable"], [v1, "Stable"],
    ]  # fmt: skip
    assert out.getvalue().splitlines()[-1].split()[3] == "serving"

    # -- a retry goes on from there ----------------------------------------------------------
    assert _act(cluster, args, "retry") == 0
    retried = eventually(
        lambda: (s := status_of(kube, ns, "deployments", "hist")).get("canaryVersion") == v2 and s,
        60,
        f"{v2} to be tried again",
    )
    assert retried["history"][:4] == history
    assert spans(retried["history"])[4:] == [(v2, "Canary", "Retried", me, None, None)]
    retried_v2 = (*CANARY, [*expected[v2][3], ("hist", "Canary", "Retried", None)])
    records_show(
        kube, ns, {v2: retried_v2, v1: expected[v1]},
        f"{v2} to be the challenger again, {v1}'s record unchanged",
    )  # fmt: skip

    # -- the Deployment is deleted: the versions keep their history, closed -------------------
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "deployments", "hist")
    records_show(
        kube, ns, {v1: (None, [], []), v2: (None, [], [])},
        "both versions to stop serving in the deleted Deployment",
    )  # fmt: skip
    kept = status_of(kube, ns, "modelversions", v1)["history"]
    assert [e.get("endReason") for e in kept] == ["Replaced", "DeploymentDeleted"]
    assert kept[0] == {**history[0], "deployment": "hist"}
