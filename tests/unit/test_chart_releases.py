"""Several namespaced releases of the chart on one cluster: cluster-scoped objects are the
release's (`<release>-operator`, `<release>-approver`...) and each release's admission policies
judge only its own namespaces, where its own operator is the one they name."""

from __future__ import annotations

from typing import Any

from tests.unit.test_rbac import rendered

CLUSTER_KINDS = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


def cluster_names(docs: list[dict[str, Any]]) -> set[str]:
    return {f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] in CLUSTER_KINDS}


def scopes(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        d["spec"]["policyName"]: d["spec"].get("matchResources")
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicyBinding"
    }


def test_namespaced_releases_share_no_cluster_scoped_name_and_judge_only_their_namespaces() -> None:
    a = rendered("-n", "team-a-system", "--set", "watchNamespaces={team-a}", release="team-a")
    b = rendered(
        "-n", "team-b-system", "--set", "watchNamespaces={team-b,team-c}", release="team-b"
    )
    assert cluster_names(a) and not cluster_names(a) & cluster_names(b)
    policies = {d["metadata"]["name"] for d in a if d["kind"] == "ValidatingAdmissionPolicy"}
    only = {"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}
    ]}}  # fmt: skip
    assert scopes(a) == dict.fromkeys(policies, only)
    assert set(scopes(b)) == {p.replace("team-a", "team-b") for p in policies}
    (approval,) = [
        d
        for d in a
        if d["kind"] == "ValidatingAdmissionPolicy" and d["metadata"]["name"] == "team-a-approval"
    ]
    assert "system:serviceaccount:team-a-system:mlkube-operator" in str(approval["spec"])
    assert "ClusterRole team-a-approver" in str(approval["spec"])


def test_release_mlkube_keeps_the_names_the_docs_use_and_judges_every_namespace() -> None:
    docs = rendered("--namespace", "mlkube-system")
    assert {
        "ClusterRole/mlkube-operator",
        "ClusterRole/mlkube-approver",
        "ClusterRole/mlkube-edit",
        "ClusterRole/mlkube-view",
        "ClusterRole/mlkube-metrics-reader",
        "ClusterRoleBinding/mlkube-operator",
        "ValidatingAdmissionPolicy/mlkube-approval",
        "ValidatingAdmissionPolicy/mlkube-free-form",
    } <= cluster_names(docs)
    assert set(scopes(docs).values()) == {None}, "a cluster-wide install judges every namespace"
