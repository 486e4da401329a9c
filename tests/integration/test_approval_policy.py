"""The chart's admission policies on a real API server, with users impersonated: a team member
with the edit role cannot approve (and is told how to get the right), nobody can record someone
else as the approver, a holder of mlkube-approver can; the operator's service account registers
policy approvals and changes only the traffic label of mlkube's pods; an action on a Deployment
names as who asked only the user asking.

The chart's cluster-scoped objects are applied under names of this run, the policies bound to this
test's namespace only (other tests on the cluster are not judged by them), and deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlkube.cli import _approve
from mlkube.controller.errors import ApiError
from mlkube.controller.kube import Cluster
from tests.cluster.fixtures import REPO_ROOT, KubeCluster
from tests.e2e.conftest import bin_dir

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
RELEASE_NAMESPACE = "mlkube-approve-test"
OPERATOR = f"system:serviceaccount:{RELEASE_NAMESPACE}:mlkube-operator"
EDITOR, APPROVER = "alice@example.com", "bob@example.com"
MODEL_VERSION = (
    REPO_ROOT
    / "charts/argocd/resource_customizations/mlkube.io/ModelVersion/actions/testdata"
    / "awaiting_approval.yaml"
)
CLUSTER_KINDS = {
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ClusterRole",
}
PICKED = {
    "mlkube-approval",
    "mlkube-approver",
    "mlkube-edit",
    "mlkube-operator-pods",
    "mlkube-action-requester",
}

pytestmark = pytest.mark.usefixtures("crds")


def chart_objects(namespace: str, suffix: str, names: set[str] = PICKED) -> list[dict[str, Any]]:
    """The chart's cluster-scoped objects called `names` (by default the approval policy and
    roles) and the operator's namespaced Role, as the chart renders them; cluster-scoped names
    get `suffix`, bindings match `namespace` only."""
    done = subprocess.run(
        [
            str(bin_dir() / "helm"), "template", "mlkube", "charts/mlkube",
            "--namespace", RELEASE_NAMESPACE, "--set", f"watchNamespaces={{{namespace}}}",
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    picked = []
    for doc in yaml.safe_load_all(done.stdout):
        if not doc:
            continue
        meta = doc["metadata"]
        if doc["kind"] in CLUSTER_KINDS and meta["name"] in names:
            meta["name"] += suffix
            if doc["kind"] == "ValidatingAdmissionPolicyBinding":
                doc["spec"]["policyName"] += suffix
                doc["spec"]["matchResources"] = {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                }
            picked.append(doc)
        elif doc["kind"] in ("Role", "RoleBinding") and meta.get("namespace") == namespace:
            picked.append(doc)
    return picked


def model_version(namespace: str, name: str, approval: dict[str, Any] | None) -> str:
    mv = yaml.safe_load(MODEL_VERSION.read_text())
    mv.pop("status")
    mv["metadata"] = {"name": name, "namespace": namespace}
    mv["spec"].pop("approval", None)
    if approval is not None:
        mv["spec"]["approval"] = approval
    return json.dumps(mv)


def approval(by: str, approved: bool = True) -> dict[str, Any]:
    return {"approved": approved, "by": by, "at": "2026-12-01T10:00:00Z"}


def patch_approval(kubectl: Kubectl, user: str, ns: str, name: str, by: str) -> Any:
    body = json.dumps({"spec": {"approval": approval(by)}})
    return kubectl(
        "patch", "modelversion.mlkube.io", name, "-n", ns, "--as", user, "--type=merge",
        "-p", body, check=False,
    )  # fmt: skip


def create_as(kubectl: Kubectl, user: str, manifest: str) -> Any:
    return kubectl("create", "--as", user, "-f", "-", input=manifest, check=False)


def as_user(kube: KubeCluster, user: str) -> Cluster:
    """The operator's and the CLI's client, impersonating `user`."""
    cluster = Cluster(kube.kubeconfig)
    cluster.api.default_headers["Impersonate-User"] = user
    cluster.api.default_headers["Impersonate-Group"] = "system:authenticated"
    return cluster


def cli_approve(kube: KubeCluster, user: str, ns: str, name: str) -> tuple[int, str, str]:
    """`mlkube approve NAME` as `user`."""
    cluster = as_user(kube, user)
    args = argparse.Namespace(namespace=ns, name=name, by=None, reason=None, reject=False)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _approve(cluster, args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def kubectl_in(kubectl: Kubectl, kube_cluster: KubeCluster) -> Kubectl:
    """kubectl that can also feed stdin."""

    def run(*args: str, check: bool = True, input: str | None = None) -> Any:
        if input is None:
            return kubectl(*args, check=check)
        return subprocess.run(
            [str(Path(bin_dir()) / "kubectl"), *args],
            env={"KUBECONFIG": kube_cluster.kubeconfig, "PATH": "/usr/bin:/bin"},
            input=input, capture_output=True, text=True, check=check, timeout=60,
        )  # fmt: skip

    return run


@pytest.fixture(scope="module")
def policy_namespace(kubectl_in: Kubectl) -> Iterator[str]:
    suffix = f"-test-{uuid.uuid4().hex[:6]}"
    ns = f"mlkube-approve{suffix}"
    kubectl_in("create", "namespace", ns)
    objects = chart_objects(ns, suffix)
    manifest = "\n---\n".join(json.dumps(o) for o in objects)
    try:
        kubectl_in("apply", "--server-side", "-f", "-", input=manifest)
        kubectl_in("create", "rolebinding", "team", "-n", ns, "--clusterrole=edit",
                   f"--user={EDITOR}", f"--user={APPROVER}")  # fmt: skip
        kubectl_in("create", "rolebinding", "approvers", "-n", ns,
                   f"--clusterrole=mlkube-approver{suffix}", f"--user={APPROVER}")  # fmt: skip
        # the chart's edit role aggregates into `edit`; the policy needs a moment to be enforced
        probe = model_version(ns, "probe", approval(EDITOR))
        deadline = time.monotonic() + 60
        while True:
            done = create_as(kubectl_in, EDITOR, probe)
            if done.returncode != 0 and "mlkube-approver" in done.stderr:
                break
            if done.returncode == 0:
                kubectl_in("delete", "modelversion.mlkube.io", "probe", "-n", ns)
            assert time.monotonic() < deadline, f"policy never enforced: {done.stderr}"
            time.sleep(1)
        yield ns
    finally:
        kubectl_in("delete", "namespace", ns, "--wait=false", check=False)
        for o in objects:
            if o["kind"] in CLUSTER_KINDS:
                kubectl_in("delete", o["kind"].lower(), o["metadata"]["name"],
                           "--ignore-not-found", check=False)  # fmt: skip


def test_an_editor_cannot_approve_and_is_told_how_to_get_the_right(
    kubectl_in: Kubectl, kube_cluster: KubeCluster, policy_namespace: str
) -> None:
    ns = policy_namespace
    assert create_as(kubectl_in, EDITOR, model_version(ns, "iris-v1", None)).returncode == 0
    refused = patch_approval(kubectl_in, EDITOR, ns, "iris-v1", EDITOR)
    assert refused.returncode != 0
    assert "may not approve or reject ModelVersion iris-v1" in refused.stderr
    assert "mlkube-approver" in refused.stderr
    created = create_as(kubectl_in, EDITOR, model_version(ns, "iris-v2", approval(EDITOR)))
    assert created.returncode != 0 and "approve" in created.stderr

    code, _, err = cli_approve(kube_cluster, EDITOR, ns, "iris-v1")
    assert code == 1
    assert f"which {EDITOR} lacks" in err
    assert f"--clusterrole=mlkube-approver --user={EDITOR}" in err

    # edits that leave the approval alone need nothing more than edit
    relabel = kubectl_in("label", "modelversion.mlkube.io", "iris-v1", "-n", ns, "team=a",
                         "--as", EDITOR, check=False)  # fmt: skip
    assert relabel.returncode == 0, relabel.stderr


def test_an_approver_approves_as_themself_and_nobody_else(
    kubectl_in: Kubectl, kube_cluster: KubeCluster, policy_namespace: str
) -> None:
    ns = policy_namespace
    assert create_as(kubectl_in, EDITOR, model_version(ns, "wine-v1", None)).returncode == 0
    forged = patch_approval(kubectl_in, APPROVER, ns, "wine-v1", EDITOR)
    assert forged.returncode != 0
    assert f"spec.approval.by must be the user making the change, {APPROVER}" in forged.stderr

    code, out, err = cli_approve(kube_cluster, APPROVER, ns, "wine-v1")
    assert code == 0, err
    assert f"approved by {APPROVER}" in out
    mv = json.loads(kubectl_in("get", "modelversion.mlkube.io", "wine-v1", "-n", ns,
                               "-o", "json").stdout)  # fmt: skip
    assert mv["spec"]["approval"]["by"] == APPROVER
    # a team member cannot undo the decision either
    assert patch_approval(kubectl_in, EDITOR, ns, "wine-v1", EDITOR).returncode != 0


def test_the_operator_records_only_a_policy_as_approver(
    kubectl_in: Kubectl, policy_namespace: str
) -> None:
    ns = policy_namespace
    by_policy = model_version(ns, "iris-v9", approval("policy:AutoApproveOnGates"))
    done = create_as(kubectl_in, OPERATOR, by_policy)
    assert done.returncode == 0, done.stderr
    as_a_person = create_as(kubectl_in, OPERATOR, model_version(ns, "iris-v8", approval(APPROVER)))
    assert as_a_person.returncode != 0
    assert "spec.approval.by must be" in as_a_person.stderr


def test_the_operator_changes_only_the_traffic_label_of_mlkube_pods(
    kubectl_in: Kubectl, kube_cluster: KubeCluster, policy_namespace: str
) -> None:
    ns = policy_namespace
    for name, labels in (
        ("server", {"mlkube.io/deployment": "iris", "mlkube.io/traffic": "on"}),
        ("other", {"app": "other"}),
    ):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            # bound to no node that exists: never pulled nor run
            "spec": {"nodeName": "nowhere", "containers": [{"name": "c", "image": "none"}]},
        }
        kubectl_in("create", "-f", "-", input=json.dumps(pod))

    operator = as_user(kube_cluster, OPERATOR)

    def label(pod: str, key: str, value: str) -> str:
        """The refusal of a merge patch sent as the operator sends it ("" when accepted)."""
        try:
            operator.patch("v1", "Pod", ns, pod, {"metadata": {"labels": {key: value}}})
        except ApiError as e:
            return e.message
        return ""

    assert label("server", "mlkube.io/traffic", "off") == ""
    assert "only a pod's mlkube.io/traffic label" in label("server", "app", "x")
    assert "only the pods of mlkube Deployments" in label("other", "mlkube.io/traffic", "off")


def test_an_action_names_only_the_user_asking_as_requester(
    kubectl_in: Kubectl, policy_namespace: str
) -> None:
    ns = policy_namespace
    deployment = {
        "apiVersion": "mlkube.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": ns},
        "spec": {"modelVersion": "iris-v1"},
    }
    assert create_as(kubectl_in, EDITOR, json.dumps(deployment)).returncode == 0

    def annotate(value: str) -> Any:
        return kubectl_in("annotate", "--overwrite", "deployment.mlkube.io", "iris", "-n", ns,
                          f"mlkube.io/action={value}", "--as", EDITOR, check=False)  # fmt: skip

    deadline = time.monotonic() + 60  # a policy applied a moment ago may not be enforced yet
    for second in range(60):
        forged = annotate(f"rollback@2026-12-07T10:01:{second:02d}Z@{APPROVER}")
        if forged.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert forged.returncode != 0
    assert f"names {APPROVER} as who asked, but {EDITOR} is making the change" in forged.stderr
    for value in (f"rollback@2026-12-07T10:00:01Z@{EDITOR}", "promote@2026-12-07T10:00:02Z"):
        done = annotate(value)
        assert done.returncode == 0, done.stderr
