"""The generated CRDs on a real API server: examples accepted, bad specs refused at apply time
with the field named, printer columns and the `mlkube` category working with kubectl."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import GROUP, PLURAL, VERSION, create, rejection

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES: dict[str, dict[str, Any]] = {
    doc["kind"]: doc
    for path in sorted((ROOT / "examples").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
}

pytestmark = pytest.mark.usefixtures("crds")


def example(kind: str, **spec_changes: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(EXAMPLES[kind])
    manifest["spec"].update(spec_changes)
    return manifest


def without(kind: str, field: str) -> dict[str, Any]:
    manifest = copy.deepcopy(EXAMPLES[kind])
    del manifest["spec"][field]
    return manifest


def canary(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"canary": {"steps": list(steps)}}


def named(kind: str, name: str) -> dict[str, Any]:
    manifest = copy.deepcopy(EXAMPLES[kind])
    manifest["metadata"]["name"] = name
    return manifest


def analysis(**thresholds: Any) -> dict[str, Any]:
    return {"canary": {"steps": [{"setWeight": 100}], "analysis": thresholds}}


RIDGE = {"className": "sklearn.linear_model.Ridge"}
IRIS_COLUMNS = [{"name": "sepal_length_cm", "type": "float"}]


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_example_is_accepted(kube_cluster: KubeCluster, namespace: str, kind: str) -> None:
    created = create(kube_cluster, namespace, example(kind))
    assert created["metadata"]["name"] == EXAMPLES[kind]["metadata"]["name"]


def test_schema_defaults_are_filled_in_by_the_api_server(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    created = create(kube_cluster, namespace, without("TrainingJob", "split"))
    assert created["spec"]["split"] == {"testPercent": 20, "seed": 42, "stratify": True}
    assert created["spec"]["backoffLimit"] == 0
    dm = create(kube_cluster, namespace, without("DriftMonitor", "window"))
    assert dm["spec"]["window"] == {"rows": 10000}
    assert dm["spec"]["method"] == "SignificantAndLarge"


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing model", without("TrainingJob", "model"), "spec.model: Required value"),
    ("model of the wrong type", example("TrainingJob", model=42), "spec.model: Invalid value"),
    (
        "dataset from an unknown scheme",
        example("TrainingJob", dataset={"uri": "ftp://x/y.csv"}),
        "spec.dataset.uri",
    ),
    (
        "estimator off the allowlist",
        example("TrainingJob", estimator={"className": "os.system"}),
        "spec.estimator.className: Unsupported value",
    ),
    ("negative backoff", example("TrainingJob", backoffLimit=-1), "spec.backoffLimit"),
    (
        "gate as a float",
        example("TrainingJob", qualityGates={"minAccuracy": 0.9}),
        "spec.qualityGates.minAccuracy",
    ),
    (
        "target among the features",
        example("TrainingJob", features=["target", "petal_length_cm"]),
        "features must not contain the target column",
    ),
    ("negative replicas", example("Deployment", replicas=-1), "spec.replicas"),
    (
        "canary weights falling",
        example(
            "Deployment", strategy=canary({"setWeight": 50}, {"setWeight": 20}, {"setWeight": 100})
        ),
        "canary setWeight values must rise from step to step",
    ),
    (
        "canary weights not ending at 100",
        example("Deployment", strategy=canary({"setWeight": 20}, {"setWeight": 60})),
        "the last canary setWeight must be 100",
    ),
    (
        "a canary step doing two things",
        example(
            "Deployment",
            strategy=canary({"setWeight": 20, "pause": {"seconds": 5}}, {"setWeight": 100}),
        ),
        "each canary step must set exactly one of setWeight, pause or analysis",
    ),
    (
        "both a version and latestApproved",
        example("Deployment", modelVersion="iris-v1"),
        "spec must set exactly one of modelVersion, or model with latestApproved",
    ),
    (
        "gateway traffic without a gateway",
        example("Deployment", traffic="GatewayAPI"),
        "gateway must be set when traffic is GatewayAPI",
    ),
    (
        "autoscaling max under min",
        example("Deployment", autoscaling={"minReplicas": 3, "maxReplicas": 2}),
        "maxReplicas must be >= minReplicas",
    ),
    (
        "a bad cron schedule",
        example("DriftMonitor", schedule="every 5 minutes"),
        "schedule must be a five-field cron",
    ),
    (
        "six cron fields",
        example("DriftMonitor", schedule="* * * * * *"),
        "schedule must be a five-field cron",
    ),
    ("an empty window", example("DriftMonitor", window={}), "window must set rows or seconds"),
    (
        "retrain without a template",
        example("DriftMonitor", action={"type": "Retrain"}),
        "retrain must be set",
    ),
    (
        "a short sha256",
        example("ModelVersion", artifact={"uri": "file:///a", "sha256": "abc"}),
        "spec.artifact.sha256",
    ),
    ("version zero", example("ModelVersion", version=0), "spec.version"),
    # -- names every generated child name and label must fit ----------------------------------
    (
        "a TrainingJob name longer than a label value",
        named(
            "TrainingJob", "churn-propensity-histgradientboosting-weekly-retrain-2026-q3-run-0001"
        ),
        "metadata.name must be at most 63 characters",
    ),
    (
        "a DriftMonitor name longer than a label value",
        named("DriftMonitor", "fraud-transactions-eu-west-1-gradient-boost-watch-for-the-q3-team"),
        "metadata.name must be at most 63 characters",
    ),
    (
        "a Deployment name its Service cannot take",
        named("Deployment", "1st-iris"),
        "metadata.name must start with a letter",
    ),
    # -- quantities and cron ranges -----------------------------------------------------------
    (
        "a cpu request that is not a quantity",
        example("TrainingJob", resources={"requests": {"cpu": "lots"}}),
        "spec.resources.requests.cpu",
    ),
    (
        "a memory limit that is not a quantity",
        example("Deployment", resources={"limits": {"memory": "1 GB"}}),
        "spec.resources.limits.memory",
    ),
    (
        "minute 61",
        example("DriftMonitor", schedule="61 * * * *"),
        "schedule must be a five-field cron expression (minute 0-59",
    ),
    ("hour 24", example("DriftMonitor", schedule="0 24 * * *"), "schedule must be a five-field"),
    ("month 13", example("DriftMonitor", schedule="0 0 1 13 *"), "schedule must be a five-field"),
    # -- what only a typo produces ------------------------------------------------------------
    (
        "a prediction shift above 1",
        example("Deployment", strategy=analysis(maxPredictionShift="1.5")),
        "maxPredictionShift must be at most 1",
    ),
    (
        "an error rate above 100 percent",
        example("Deployment", strategy=analysis(maxErrorRatePercent="150")),
        "maxErrorRatePercent must be at most 100",
    ),
    ("a p-value above 1", example("DriftMonitor", pValue="2"), "pValue must be at most 1"),
    (
        "a drift share above 1",
        example("DriftMonitor", driftShare="1.5"),
        "driftShare must be at most 1",
    ),
    (
        "an accuracy above 1",
        example("TrainingJob", qualityGates={"minAccuracy": "90"}),
        "minAccuracy must be at most 1",
    ),
    (
        "minAccuracy on a regressor",
        example("TrainingJob", estimator=RIDGE, qualityGates={"minAccuracy": "0.9"}),
        "qualityGates.minAccuracy must only be set for a classification estimator",
    ),
    (
        "maxRmse on a classifier",
        example("TrainingJob", qualityGates={"maxRmse": "0.5"}),
        "qualityGates.maxRmse must only be set for a regression estimator",
    ),
    (
        "a data-test range with min over max",
        example("TrainingJob", dataTests={"ranges": [{"column": "a", "min": "10", "max": "1"}]}),
        "a data-test range's min must not exceed its max",
    ),
    (
        "a column named twice in an input schema",
        example("ModelVersion", inputSchema=IRIS_COLUMNS * 2),
        "spec.inputSchema[1]: Duplicate value",
    ),
    (
        "a feature named twice",
        example("TrainingJob", features=["petal_length_cm", "petal_length_cm"]),
        "spec.features[1]: Duplicate value",
    ),
    ("an unknown stage", example("ModelVersion", stage="Live"), "spec.stage: Unsupported value"),
    # -- live quality and labelled production data ---------------------------------------------
    (
        "a dataset with neither uri nor inferenceLog",
        example("TrainingJob", dataset={"format": "Csv"}),
        "dataset must set uri, inferenceLog or both",
    ),
    (
        "appendOriginal without the original",
        example(
            "TrainingJob", dataset={"inferenceLog": {"deployment": "iris", "appendOriginal": True}}
        ),
        "dataset.uri must be set when inferenceLog.appendOriginal is true",
    ),
    (
        "an original beside the log that would be ignored",
        example(
            "TrainingJob", dataset={"uri": "builtin:iris", "inferenceLog": {"deployment": "iris"}}
        ),
        "inferenceLog.appendOriginal must be true when dataset.uri is set beside it",
    ),
    (
        "a champion named twice over",
        example(
            "TrainingJob",
            qualityGates={"champion": {"modelVersion": "iris-v1", "deployment": "iris"}},
        ),
        "qualityGates.champion must set exactly one of modelVersion and deployment",
    ),
    (
        "an inference log window of both rows and seconds",
        example(
            "TrainingJob",
            dataset={"inferenceLog": {"deployment": "iris", "rows": 10, "seconds": 60}},
        ),
        "inferenceLog must set at most one of rows and seconds",
    ),
    (
        "a performance threshold and a maximum drop at once",
        example("DriftMonitor", performance={"threshold": "0.9", "maxDrop": "0.05"}),
        "performance must set at most one of threshold and maxDrop",
    ),
    (
        "an accuracy threshold above 1",
        example("DriftMonitor", performance={"metric": "Accuracy", "threshold": "90"}),
        "performance.threshold must be at most 1 for Accuracy, F1 and RocAuc",
    ),
    (
        "an unknown live metric",
        example("DriftMonitor", performance={"metric": "Precision"}),
        "spec.performance.metric: Unsupported value",
    ),
    (
        "a slice by the log's own request id",
        example("DriftMonitor", performance={"sliceBy": "_mlkube_request_id"}),
        "sliceBy must be an input column",
    ),
    (
        "an outcome name with a space",
        example("DriftMonitor", performance={"outcomes": [{"name": "fraud loss"}]}),
        "spec.performance.outcomes[0].name",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "message"), [(m, msg) for _, m, msg in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_bad_specs_are_refused_naming_the_field(
    kube_cluster: KubeCluster, namespace: str, manifest: dict[str, Any], message: str
) -> None:
    assert message in rejection(kube_cluster, namespace, manifest)


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        ("DriftMonitor", {"schedule": "59 23 31 12 7"}),
        ("DriftMonitor", {"schedule": "*/5 0-23 * jan-dec MON-FRI"}),
        (
            "TrainingJob",
            {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2}}},
        ),
        ("TrainingJob", {"estimator": RIDGE, "qualityGates": {"minR2": "-0.5", "maxRmse": "3"}}),
        ("Deployment", {"strategy": analysis(maxPredictionShift="1", maxErrorRatePercent="100")}),
        (
            "TrainingJob",
            {
                "dataset": {
                    "uri": "builtin:iris",
                    "inferenceLog": {"deployment": "iris", "rows": 5000, "appendOriginal": True},
                }
            },
        ),
        (
            "DriftMonitor",
            {
                "performance": {
                    "metric": "Rmse",
                    "threshold": "12.5",
                    "outcomes": [{"name": "revenue", "aggregate": "Mean"}],
                    "sliceBy": "region",
                }
            },
        ),
    ],
)
def test_values_at_their_bounds_are_accepted(
    kube_cluster: KubeCluster, namespace: str, kind: str, changes: dict[str, Any]
) -> None:
    create(kube_cluster, namespace, example(kind, **changes), dry_run=True)


@pytest.mark.parametrize(
    ("kind", "field", "value", "message"),
    [
        ("TrainingJob", "model", "wine", "model must not change after creation"),
        (
            "TrainingJob",
            "estimator",
            {"className": "sklearn.svm.SVC"},
            "estimator must not change after creation",
        ),
        ("ModelVersion", "version", 7, "version must not change after creation"),
    ],
)
def test_immutable_fields_cannot_change(
    kube_cluster: KubeCluster, namespace: str, kind: str, field: str, value: Any, message: str
) -> None:
    manifest = example(kind)
    create(kube_cluster, namespace, manifest)
    with pytest.raises(ApiException) as refused:
        kube_cluster.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL[kind],
            manifest["metadata"]["name"],
            {"spec": {field: value}},
        )
    assert refused.value.status == 422
    assert message in str(refused.value.body)


GRID = {"method": "Grid", "space": {"C": {"values": [0.1, 1.0]}}}


def test_a_search_cannot_be_added_or_removed_after_creation(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    """A TrainingJob is a search or a single fit for its whole life (Katib's Experiment spec is
    immutable too); an optional field's own `self == oldSelf` rule cannot see it come or go."""
    plain, searching = named("TrainingJob", "plain"), example("TrainingJob", search=GRID)
    searching["metadata"]["name"] = "searching"
    for manifest, patch in (
        (plain, {"spec": {"search": GRID}}),
        (searching, {"spec": {"search": None}}),
    ):
        create(kube_cluster, namespace, manifest)
        with pytest.raises(ApiException) as refused:
            kube_cluster.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "trainingjobs", manifest["metadata"]["name"], patch
            )
        assert refused.value.status == 422
        assert "spec.search: Invalid value" in str(refused.value.body)
        assert "search must not be added or removed after creation" in str(refused.value.body)


def test_a_drift_monitors_retrain_template_may_be_edited(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    """The TrainingJob's immutable fields are fixed in each TrainingJob made from the template,
    not in the template itself."""
    manifest = example("DriftMonitor")
    create(kube_cluster, namespace, manifest)
    template = {"estimator": {"className": "sklearn.svm.SVC"}, "search": GRID}
    patched = kube_cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "driftmonitors", manifest["metadata"]["name"],
        {"spec": {"action": {"retrain": {"template": template}}}},
    )  # fmt: skip
    assert patched["spec"]["action"]["retrain"]["template"]["estimator"]["className"] == (
        "sklearn.svm.SVC"
    )


def test_suspend_may_change(kube_cluster: KubeCluster, namespace: str) -> None:
    manifest = example("TrainingJob")
    create(kube_cluster, namespace, manifest)
    patched = kube_cluster.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "trainingjobs",
        manifest["metadata"]["name"],
        {"spec": {"suspend": True}},
    )
    assert patched["spec"]["suspend"] is True


def test_kubectl_get_mlkube_lists_all_four_kinds_with_columns(
    kube_cluster: KubeCluster,
    namespace: str,
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    for kind in EXAMPLES:
        create(kube_cluster, namespace, example(kind))
    listing = kubectl("get", "mlkube", "-n", namespace).stdout
    for resource in (
        "trainingjob.mlkube.io/",
        "modelversion.mlkube.io/",
        "deployment.mlkube.io/",
        "driftmonitor.mlkube.io/",
    ):
        assert resource in listing, listing
    columns = (
        kubectl("get", "deployments.mlkube.io", "-n", namespace).stdout.splitlines()[0].split()
    )
    assert columns == ["NAME", "READY", "PHASE", "STABLE", "CANARY", "WEIGHT", "STEP", "AGE"]
    short = kubectl("get", "mlmv", "-n", namespace).stdout
    assert "iris-v1" in short
    assert "APPROVED" in short.splitlines()[0]
    apps = (
        kubectl("get", "deployments", "-n", namespace).stderr
        + kubectl("get", "deployments", "-n", namespace).stdout
    )
    assert "iris" not in apps, "a bare `deployments` still means apps/v1"


LOGISTIC = "sklearn.linear_model.LogisticRegression"
MEGABYTE = "x" * 2**20


def hyperparameters(values: dict[str, Any]) -> dict[str, Any]:
    return example("TrainingJob", estimator={"className": LOGISTIC, "hyperparameters": values})


OVERSIZE: list[tuple[str, dict[str, Any], str]] = [
    (
        "hyperparameters with 65 keys",
        hyperparameters({f"p{i}": i for i in range(65)}),
        "spec.estimator.hyperparameters: Too many: 65: must have at most 64 items",
    ),
    (
        "a 1 MB hyperparameter string",
        hyperparameters({"note": MEGABYTE}),
        "spec.estimator.hyperparameters.note: Too long: may not be more than 256",
    ),
    (
        "hyperparameters nested three deep",
        hyperparameters({"layers": [[[1]]]}),
        "spec.estimator.hyperparameters.layers[0][0]: Too many: 1: must have at most 0 items",
    ),
    (
        "a 1 MB dataset.uri",
        example("TrainingJob", dataset={"uri": f"https://example.com/{MEGABYTE}"}),
        "spec.dataset.uri: Too long: may not be more than 2048",
    ),
    (
        "a 1 MB lineage.params string",
        example("ModelVersion", lineage={"params": {"C": MEGABYTE}}),
        "spec.lineage.params.C: Too long",
    ),
    (
        "a metrics key of 300 characters",
        example("ModelVersion", metrics={"a" * 300: "0.9"}),
        "metrics keys must be at most 253 characters",
    ),
    (
        "1025 features",
        example("TrainingJob", features=[f"f{i}" for i in range(1025)]),
        "spec.features: Too many: 1025: must have at most 1024 items",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "message"), [(m, msg) for _, m, msg in OVERSIZE], ids=[i for i, _, _ in OVERSIZE]
)
def test_oversize_specs_are_refused_naming_the_field(
    kube_cluster: KubeCluster, namespace: str, manifest: dict[str, Any], message: str
) -> None:
    """Issue 16: unbounded specs once got the operator OOMKilled for every tenant."""
    assert message in rejection(kube_cluster, namespace, manifest)


def test_hyperparameters_keep_nulls_lists_and_maps(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    """The bounds keep what scikit-learn takes: None, a tuple of layer sizes, class weights."""
    values = {"C": 0.5, "max_depth": None, "hidden": [100, 50], "class_weight": [{"0": 1}]}
    created = create(kube_cluster, namespace, hyperparameters(values), dry_run=True)
    assert created["spec"]["estimator"]["hyperparameters"] == values


def test_an_oversize_status_is_refused_naming_the_field(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    manifest = example("TrainingJob")
    create(kube_cluster, namespace, manifest)
    with pytest.raises(ApiException) as refused:
        kube_cluster.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            "trainingjobs",
            manifest["metadata"]["name"],
            {"status": {"progress": MEGABYTE}},
        )
    assert refused.value.status == 422
    assert "status.progress: Too long" in str(refused.value.body)
