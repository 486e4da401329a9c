"""Specs the schema lets through but the world refuses end in a clear condition, not a crash loop."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from kopf.testing import KopfRunner

from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import (
    GROUP,
    VERSION,
    condition,
    create,
    eventually,
    status_of,
    training_finished,
)

pytestmark = pytest.mark.usefixtures("crds")


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


TRAINING = {
    "model": "iris",
    "dataset": {"uri": "builtin:iris"},
    "estimator": {"className": "sklearn.naive_bayes.GaussianNB"},
    "approvalPolicy": "AutoApproveOnGates",
}


@pytest.mark.timeout(900)
def test_bad_specs_end_with_a_reason(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    create(
        kube,
        ns,
        manifest(
            "TrainingJob",
            "missing-data",
            {**TRAINING, "dataset": {"uri": f"file:///var/lib/mlkube/artifacts/{ns}/none.csv"}},
        ),
    )
    create(
        kube,
        ns,
        manifest(
            "TrainingJob",
            "other-namespace",
            {**TRAINING, "dataset": {"uri": "file:///var/lib/mlkube/artifacts/team-b/data.csv"}},
        ),
    )
    create(
        kube,
        ns,
        manifest(
            "TrainingJob",
            "other-labels",
            {
                **TRAINING,
                "dataset": {
                    "inferenceLog": {
                        "deployment": "iris",
                        "feedbackUris": ["file:///var/lib/mlkube/artifacts/team-b/labels.csv"],
                    }
                },
            },
        ),
    )
    create(
        kube,
        ns,
        manifest(
            "TrainingJob", "no-image", {**TRAINING, "image": "localhost/mlkube-missing:0.0.1"}
        ),
    )
    create(
        kube,
        ns,
        manifest(
            "TrainingJob",
            "metadata-service",  # an SSRF: the cloud's instance metadata, or any internal host
            {**TRAINING, "dataset": {"uri": "https://169.254.169.254/latest/meta-data/x.csv"}},
        ),
    )
    create(
        kube,
        ns,
        manifest(
            "TrainingJob",
            "no-champion",
            {**TRAINING, "qualityGates": {"champion": {"deployment": "ghost"}}},
        ),
    )
    create(
        kube,
        ns,
        manifest(
            "TrainingJob",
            "long-key",  # stored where the chart's mlkube-free-form policy is not bound
            {**TRAINING, "estimator": {**TRAINING["estimator"], "hyperparameters": {"k" * 300: 1}}},
        ),
    )
    create(kube, ns, manifest("TrainingJob", "good", TRAINING))
    create(kube, ns, manifest("Deployment", "ghost", {"modelVersion": "iris-v42"}))
    create(
        kube,
        ns,
        manifest(
            "DriftMonitor",
            "other-labels",
            {
                "deployment": "ghost",
                "performance": {
                    "feedbackUris": ["s3://another-bucket/labels/", "file:///etc/passwd"]
                },
            },
        ),
    )

    missing = training_finished(kube, ns, "missing-data")
    assert missing["phase"] == "Failed"
    assert condition(missing, "Failed")["reason"] == "DatasetNotFound"
    assert "none.csv" in condition(missing, "Failed")["message"]

    elsewhere = condition(training_finished(kube, ns, "other-namespace"), "Failed")
    assert elsewhere["reason"] == "ForbiddenURI"
    assert elsewhere["message"].startswith(
        "spec.dataset.uri: file:///var/lib/mlkube/artifacts/team-b/data.csv is outside this namespace's store"
    )

    watching = eventually(
        lambda: condition(status_of(kube, ns, "driftmonitors", "other-labels"), "Ready"),
        60,
        "the DriftMonitor reading another store's labels to be refused",
    )
    assert (watching["status"], watching["reason"]) == ("False", "ForbiddenURI")
    assert watching["message"].startswith("spec.performance.feedbackUris[0]: s3://another-bucket/")

    labels = condition(training_finished(kube, ns, "other-labels"), "Failed")
    assert labels["reason"] == "ForbiddenURI"
    assert labels["message"].startswith(
        "spec.dataset.inferenceLog.feedbackUris[0]: file:///var/lib/mlkube/artifacts/team-b/"
    )

    ssrf = condition(training_finished(kube, ns, "metadata-service"), "Failed")
    assert ssrf["reason"] == "ForbiddenURI"
    assert "169.254.169.254, a private, loopback, link-local or reserved address" in ssrf["message"]

    unserved = condition(training_finished(kube, ns, "no-champion"), "Failed")
    assert unserved["reason"] == "ChampionNotFound"
    assert unserved["message"] == "qualityGates.champion: Deployment ghost serves no version"

    long_key = training_finished(kube, ns, "long-key")  # the operator's refusal: Failed too
    assert (long_key["phase"], condition(long_key, "Failed")["reason"]) == ("Failed", "InvalidSpec")
    assert condition(long_key, "Failed")["message"].startswith("spec.estimator.hyperparameters")

    no_image = training_finished(kube, ns, "no-image")
    assert condition(no_image, "Failed")["reason"] == "ImagePullFailed"

    ghost = eventually(
        lambda: condition(status_of(kube, ns, "deployments", "ghost"), "Ready"),
        60,
        "ghost's Ready condition",
    )
    assert ghost["status"] == "False"
    assert ghost["reason"] == "ModelVersionNotFound"
    assert "iris-v42" in ghost["message"]

    good = training_finished(kube, ns, "good")
    assert good["phase"] == "Succeeded", good
    real = kube.custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, "modelversions", good["modelVersion"]
    )
    tampered = {
        **real["spec"],
        "version": 99,
        "artifact": {**real["spec"]["artifact"], "sha256": "0" * 64},
    }
    create(kube, ns, manifest("ModelVersion", "iris-v99", tampered))
    invalid = eventually(
        lambda: (
            (s := status_of(kube, ns, "modelversions", "iris-v99")).get("phase") == "Invalid" and s
        ),
        120,
        "the tampered ModelVersion to be refused",
    )
    ready = condition(invalid, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DigestMismatch")
    assert "0" * 64 in ready["message"]
    assert real["spec"]["artifact"]["sha256"] not in ready["message"], "never the real digest"

    borrowed = {
        **real["spec"],
        "version": 98,
        "artifact": {
            **real["spec"]["artifact"],
            "uri": "file:///var/lib/mlkube/artifacts/team-b/iris/1",
        },
    }
    create(kube, ns, manifest("ModelVersion", "iris-v98", borrowed))
    forbidden = eventually(
        lambda: condition(status_of(kube, ns, "modelversions", "iris-v98"), "Ready"),
        60,
        "the ModelVersion naming another namespace's artifact to be refused",
    )
    assert (forbidden["status"], forbidden["reason"]) == ("False", "ForbiddenURI")
    assert forbidden["message"].startswith("spec.artifact.uri: ")

    create(kube, ns, manifest("Deployment", "tampered", {"modelVersion": "iris-v99"}))
    refused = eventually(
        lambda: condition(status_of(kube, ns, "deployments", "tampered"), "Ready"),
        60,
        "tampered's Ready",
    )
    assert refused["reason"] == "ModelVersionNotReady"
    assert "DigestMismatch" in refused["message"]
    pods = kube.core.list_namespaced_pod(ns, label_selector="mlkube.io/deployment=tampered").items
    assert pods == [], "a refused version gets no server pods"


@pytest.mark.timeout(600)
def test_an_unapproved_version_waits_for_mlkube_approve(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> None:
    kube, ns = kube_cluster, operator_namespace
    create(
        kube,
        ns,
        manifest(
            "TrainingJob",
            "manual",
            {
                **TRAINING,
                "model": "wine",
                "dataset": {"uri": "builtin:wine"},
                "approvalPolicy": "Manual",
            },
        ),
    )
    trained = training_finished(kube, ns, "manual")
    assert trained["phase"] == "Succeeded", trained
    create(
        kube,
        ns,
        manifest("Deployment", "wine", {"modelVersion": trained["modelVersion"], "replicas": 1}),
    )
    waiting = eventually(
        lambda: (
            (c := condition(status_of(kube, ns, "deployments", "wine"), "Ready")).get("reason")
            == "NotApproved"
            and c
        ),
        120,
        "the Deployment to wait for approval",
    )
    assert f"mlkube approve {trained['modelVersion']}" in waiting["message"]

    cli = [sys.executable, "-m", "mlkube.cli", "--kubeconfig", kube.kubeconfig, "-n", ns]
    approved = subprocess.run(
        [*cli, "approve", trained["modelVersion"], "--by", "alice"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert approved.returncode == 0, approved.stderr
    eventually(
        lambda: status_of(kube, ns, "deployments", "wine").get("phase") == "Healthy",
        180,
        "wine to serve once approved",
    )
    listing = subprocess.run([*cli, "status"], capture_output=True, text=True, check=True).stdout
    assert "wine" in listing
    assert "Healthy" in listing
    mv = kube.custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, "modelversions", trained["modelVersion"]
    )
    assert mv["spec"]["approval"]["by"] == "alice"
