"""The chart's mlkube-free-form policy on a real API server: keys of the free-form maps
(hyperparameters, lineage.params) are bounded at apply time, at every depth the CRDs allow,
naming the field; the CRDs alone cannot (CEL there cannot read values of no declared type).

The policy is applied under a name of this run and bound to this module's namespace only.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from mlkube.api.common import FREE_FORM_STRING
from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import create, rejection
from tests.integration.test_approval_policy import CLUSTER_KINDS, chart_objects
from tests.integration.test_crds_apiserver import example, hyperparameters

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
LONG = "k" * (FREE_FORM_STRING + 1)
FIELD = "spec.estimator.hyperparameters"

pytestmark = pytest.mark.usefixtures("crds")


@pytest.fixture(scope="module")
def policy_namespace(
    kubectl: Kubectl, kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    suffix = f"-test-{uuid.uuid4().hex[:6]}"
    ns = f"mlkube-free-form{suffix}"
    kubectl("create", "namespace", ns)
    objects = [
        o for o in chart_objects(ns, suffix, {"mlkube-free-form"}) if o["kind"] in CLUSTER_KINDS
    ]
    path = tmp_path_factory.mktemp("policy") / "free-form.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    try:
        kubectl("apply", "--server-side", "-f", str(path))
        deadline = time.monotonic() + 60  # a new policy is enforced a moment later
        while True:
            try:
                create(kube_cluster, ns, hyperparameters({LONG: 1}), dry_run=True)
            except ApiException:  # refused: enforced
                break
            assert time.monotonic() < deadline, "policy never enforced"
            time.sleep(1)
        yield ns
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
        for o in objects:
            kubectl("delete", o["kind"].lower(), o["metadata"]["name"], "--ignore-not-found",
                    check=False)  # fmt: skip


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (
        "64 keys of 20,000 characters",
        hyperparameters({f"{i:02d}" + "k" * 19998: 1 for i in range(64)}),
        f"{FIELD} keys must be at most {FREE_FORM_STRING} characters: one has 20000",
    ),
    (
        "a map value with 128 keys of 10,000 characters",
        hyperparameters({"C": {f"{i:03d}" + "k" * 9997: 1 for i in range(128)}}),
        f"{FIELD}.C holds a key of more than {FREE_FORM_STRING} characters",
    ),
    (
        "a long key two maps deep",
        hyperparameters({"C": {"a": {LONG: 1}}}),
        f"{FIELD}.C holds a key of more than {FREE_FORM_STRING} characters",
    ),
    (
        "a long key in a map in a list",
        hyperparameters({"class_weight": [{"0": 1}, {LONG: 2}]}),
        f"{FIELD}.class_weight holds a key of more than {FREE_FORM_STRING} characters",
    ),
    (
        "a long lineage.params key",
        example("ModelVersion", lineage={"params": {LONG: 1}}),
        f"spec.lineage.params keys must be at most {FREE_FORM_STRING} characters",
    ),
    (
        "a long key in a retrain template's hyperparameters",
        example(
            "DriftMonitor",
            action={"retrain": {"template": hyperparameters({"C": {LONG: 1}})["spec"]}},
        ),
        "spec.action.retrain.template.estimator.hyperparameters.C holds a key of more than",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "message"), [(m, msg) for _, m, msg in REFUSED], ids=[i for i, _, _ in REFUSED]
)
def test_long_free_form_keys_are_refused_at_apply_time_naming_the_field(
    kube_cluster: KubeCluster, policy_namespace: str, manifest: dict[str, Any], message: str
) -> None:
    """Issue 16: such objects (1.28 MB) were stored, and refused by the operator only after."""
    assert message in rejection(kube_cluster, policy_namespace, manifest)


def test_keys_at_the_bound_pass_at_every_depth(
    kube_cluster: KubeCluster, policy_namespace: str
) -> None:
    key = "k" * FREE_FORM_STRING
    values = {key: 1, "C": {key: {key: 1}}, "class_weight": [{key: 1}]}
    created = create(kube_cluster, policy_namespace, hyperparameters(values), dry_run=True)
    assert created["spec"]["estimator"]["hyperparameters"] == values
