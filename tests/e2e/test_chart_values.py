"""What the chart renders for the values platform teams set, and what it refuses (``helm template``,
the helm binary the test bed builds; no cluster needed)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.cluster.fixtures import REPO_ROOT
from tests.e2e.conftest import bin_dir


def render(*values: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir() / "helm"), "template", "mlkube", "charts/mlkube", *values],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def operator_pod(*values: str) -> dict[str, Any]:
    done = render(*values)
    assert done.returncode == 0, done.stderr
    for doc in yaml.safe_load_all(done.stdout):
        if doc and doc["kind"] == "Deployment":
            return dict(doc["spec"]["template"]["spec"])
    raise AssertionError("no operator Deployment rendered")


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["containers"][0]["env"]}


def test_the_defaults_run_every_namespace_as_uid_65532_on_the_pvc_store() -> None:
    pod = operator_pod()
    container = pod["containers"][0]
    assert "--all-namespaces" in container["command"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert container["env"][0]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    env = env_of(pod)
    assert env["MLKUBE_ARTIFACT_PVC"] == "mlkube-artifacts"
    assert env["MLKUBE_WORKLOAD_RUN_AS_USER"] == "65532"
    assert "MLKUBE_ARTIFACT_ROOT" not in env


def test_an_exclusion_stays_in_one_kopf_pattern_so_it_narrows_instead_of_widening(
    tmp_path: Any,
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text('watchNamespaces: ["team-*,!team-legacy", "ml-*"]\n')
    command = operator_pod("-f", str(values))["containers"][0]["command"]
    assert "--namespace=team-*,!team-legacy" in command
    assert "--namespace=ml-*" in command
    assert "--all-namespaces" not in command
    assert render("--set", "watchNamespaces={!team-legacy}").returncode != 0


def test_openshift_and_private_registries() -> None:
    pod = operator_pod(
        "--set", "podSecurityContext.runAsUser=null",
        "--set", "workloads.runAsUser=null",
        "--set", "imagePullSecrets={registry-key}",
        "--set", "runtimeImage.pullPolicy=Always",
    )  # fmt: skip
    assert "runAsUser" not in pod["securityContext"]
    assert pod["imagePullSecrets"] == [{"name": "registry-key"}]
    env = env_of(pod)
    assert (env["MLKUBE_WORKLOAD_RUN_AS_USER"], env["MLKUBE_IMAGE_PULL_SECRETS"]) == (
        "",
        "registry-key",
    )
    assert env["MLKUBE_IMAGE_PULL_POLICY"] == "Always"


def test_object_storage_values_reach_the_operator() -> None:
    s3 = [
        "--set", "artifacts.root=s3://models/prod",
        "--set", "artifacts.s3Secret=mlkube-s3",
        "--set", "artifacts.s3EndpointURL=http://seaweedfs:8333",
        "--set", "artifacts.allowedURIPrefixes={s3://datasets/public}",
    ]  # fmt: skip
    env = env_of(operator_pod(*s3))
    assert env["MLKUBE_ARTIFACT_ROOT"] == "s3://models/prod"
    assert env["MLKUBE_S3_SECRET"] == "mlkube-s3"
    assert env["MLKUBE_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert env["MLKUBE_ALLOWED_URI_PREFIXES"] == "s3://datasets/public"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "image.tag=latest"], 'image.tag must not be "latest"'),
        (
            ["--set", "artifacts.s3Secret=mlkube-s3"],
            "artifacts.s3Secret is used only with object storage",
        ),
        (
            [
                "--set",
                "artifacts.root=s3://models/prod",
                "--set",
                "artifacts.allowedURIPrefixes={s3://models}",
            ],
            "overlaps artifacts.root",
        ),
        (["--set", "artifacts.root=s3://models//../x"], "/artifacts/root"),
        (["--set", "artifacts.root=file:///data"], "/artifacts/root"),
        (["--set", "artifacts.pvc.accessMode=RWX"], "/artifacts/pvc/accessMode"),
        (["--set", "quota.enabled=true"], "quota.namespaces must list the namespaces"),
        (["--set", "quota.namespaces={Team_A}"], "/quota/namespaces/0"),
        (["--set", "quota.objects.jobs=5"], "/quota/objects"),
    ],
)
def test_values_that_cannot_work_are_refused_with_the_value_named(
    values: list[str], message: str
) -> None:
    done = render(*values)
    assert done.returncode != 0
    assert message in done.stderr


def quotas(*values: str) -> list[dict[str, Any]]:
    done = render(*values)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "ResourceQuota"]


def test_object_quotas_are_off_by_default_and_count_every_kind_per_listed_namespace() -> None:
    assert quotas() == []
    rendered = quotas(
        "--set", "quota.enabled=true", "--set", "quota.namespaces={team-a,team-b}",
        "--set", "quota.objects.trainingjobs=30",
    )  # fmt: skip
    assert [q["metadata"]["namespace"] for q in rendered] == ["team-a", "team-b"]
    assert rendered[0]["spec"]["hard"] == {
        "count/trainingjobs.mlkube.io": "30",
        "count/modelversions.mlkube.io": "500",
        "count/deployments.mlkube.io": "50",
        "count/driftmonitors.mlkube.io": "50",
        "count/batchpredictions.mlkube.io": "100",
    }


def test_a_refused_metrics_scrape_names_the_reader_role_of_this_release() -> None:
    done = subprocess.run(
        [str(bin_dir() / "helm"), "template", "team-ml", "charts/mlkube"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    roles = {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"}
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    named = env_of(pod)["MLKUBE_METRICS_READER_ROLE"]
    assert named == "team-ml-metrics-reader"
    assert named in roles
