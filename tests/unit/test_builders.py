"""Manifest builders: pure functions from a custom resource to the children it owns."""

from __future__ import annotations

import json

import pytest

from mlkube.api.deployment import DeploymentSpec
from mlkube.api.driftmonitor import DriftMonitorSpec
from mlkube.api.modelversion import ModelVersionSpec
from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.builders.common import Owner, artifact_pvc, child_name
from mlkube.builders.monitoring import Watched, build_cronjob, cronjob_name
from mlkube.builders.serving import (
    TRAFFIC_LABEL,
    build_autoscaler,
    build_httproute,
    build_server_deployment,
    build_service,
    server_name,
)
from mlkube.builders.training import build_job, build_verify_job, job_name
from mlkube.config import OperatorConfig
from mlkube.core.routes import desired_route

CONFIG = OperatorConfig(runtime_image="localhost/mlkube-runtime:0.1.0")
TJ_OWNER = Owner(kind="TrainingJob", name="iris-train", namespace="team-a", uid="uid-1")
DEP_OWNER = Owner(kind="Deployment", name="iris", namespace="team-a", uid="uid-2")
TRAINING = TrainingJobSpec.model_validate(
    {
        "model": "iris",
        "dataset": {"uri": "builtin:iris"},
        "estimator": {"className": "sklearn.linear_model.LogisticRegression"},
        "backoffLimit": 2,
        "ttlSecondsAfterFinished": 600,
        "activeDeadlineSeconds": 900,
    }
)
VERSION = ModelVersionSpec.model_validate(
    {
        "model": "iris",
        "version": 2,
        "task": "classification",
        "artifact": {"uri": "file:///var/lib/mlkube/artifacts/team-a/iris/2", "sha256": "a" * 64},
        "framework": {"version": "1.9.1"},
        "inputSchema": [{"name": "x", "type": "float"}],
    }
)


def container(manifest: dict, path: tuple[str, ...] = ("spec", "template", "spec")) -> dict:  # type: ignore[type-arg]
    node = manifest
    for key in path:
        node = node[key]
    return node["containers"][0]  # type: ignore[no-any-return]


def test_job_is_named_owned_and_deterministic() -> None:
    job = build_job(TJ_OWNER, TRAINING, 3, CONFIG)
    assert job == build_job(TJ_OWNER, TRAINING, 3, CONFIG)
    assert job["metadata"]["name"] == job_name("iris-train") == "iris-train-train"
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingJob", "uid-1", True)
    assert job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"]["mlkube.io/model"] == "iris"


def test_job_carries_deadline_backoff_and_suspend() -> None:
    job = build_job(TJ_OWNER, TRAINING, 1, CONFIG)["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (2, 900)
    assert "ttlSecondsAfterFinished" not in job, "the operator deletes it once its result is read"
    assert job["suspend"] is False
    suspended = TRAINING.model_copy(update={"suspend": True})
    assert build_job(TJ_OWNER, suspended, 1, CONFIG)["spec"]["suspend"] is True
    rule = job["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"]["values"] == [3], "permanent failures are not retried"


def test_suspending_never_changes_the_immutable_pod_template() -> None:
    suspended = TRAINING.model_copy(update={"suspend": True})
    running = build_job(TJ_OWNER, TRAINING, 1, CONFIG)["spec"]["template"]
    assert build_job(TJ_OWNER, suspended, 1, CONFIG)["spec"]["template"] == running


def test_a_cronjob_name_leaves_room_for_the_run_suffix() -> None:
    name = cronjob_name("fraud-transactions-eu-west-1-gradient-boost-watch")
    assert len(name) <= 52
    assert name.endswith("-drift")
    assert cronjob_name("iris") == "iris-drift"


def test_trainer_gets_the_spec_version_and_a_termination_message() -> None:
    trainer = container(build_job(TJ_OWNER, TRAINING, 4, CONFIG))
    assert trainer["command"] == ["mlkube-runtime"]
    args = trainer["args"]
    assert args[args.index("--version") + 1] == "4"
    assert args[args.index("--namespace") + 1] == "team-a"
    assert args[args.index("--spec") + 1] == "env:MLKUBE_SPEC"
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert TrainingJobSpec.model_validate(json.loads(env["MLKUBE_SPEC"])) == TRAINING
    assert trainer["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert trainer["imagePullPolicy"] == "IfNotPresent"
    assert trainer["image"] == "localhost/mlkube-runtime:0.1.0"


def test_champion_is_passed_to_the_trainer() -> None:
    args = container(build_job(TJ_OWNER, TRAINING, 2, CONFIG, champion=("file:///a/1", "b" * 64)))[
        "args"
    ]
    assert args[args.index("--champion-uri") + 1] == "file:///a/1"
    assert args[args.index("--champion-sha256") + 1] == "b" * 64


def test_pods_run_restricted_with_a_writable_tmp_and_the_artifact_volume() -> None:
    pod = build_job(TJ_OWNER, TRAINING, 1, CONFIG)["spec"]["template"]["spec"]
    trainer = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert trainer["securityContext"]["allowPrivilegeEscalation"] is False
    assert trainer["securityContext"]["readOnlyRootFilesystem"] is True
    assert trainer["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in trainer["volumeMounts"]}
    assert {"/tmp", "/var/lib/mlkube/artifacts"} <= mounts
    assert pod["restartPolicy"] == "Never"


def test_object_storage_needs_no_volume_and_passes_the_namespace_secret() -> None:
    s3 = OperatorConfig(
        artifact_pvc=None,
        artifact_root="s3://models/prod",
        s3_secret="s3-creds",
        s3_endpoint_url="http://s3.example:8333",
    )
    job = build_job(TJ_OWNER, TRAINING, 1, s3)
    trainer = container(job)
    assert trainer["envFrom"] == [{"secretRef": {"name": "s3-creds"}}], (
        "a Secret of the pod's own namespace"
    )
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["AWS_ENDPOINT_URL"] == "http://s3.example:8333"
    assert env["MLKUBE_ARTIFACT_ROOT"] == "s3://models/prod"
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    server = build_server_deployment(
        DEP_OWNER, DeploymentSpec(model_version="iris-v2"), "iris-v2", VERSION, 1, s3
    )
    serving = server["spec"]["template"]["spec"]["containers"][0]
    assert serving["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://s3.example:8333"} in serving["env"]
    assert [m["mountPath"] for m in trainer["volumeMounts"]] == ["/tmp"]
    assert artifact_pvc("team-a", s3) is None
    pvc = artifact_pvc("team-a", CONFIG)
    assert pvc is not None
    assert pvc["metadata"]["name"] == "mlkube-artifacts"
    assert "ownerReferences" not in pvc["metadata"], "artifacts outlive any one object"


@pytest.mark.parametrize("base", ["a" * 40, "a" * 63, "x-" * 40])
def test_child_names_stay_within_63_characters_and_deterministic(base: str) -> None:
    name = child_name(base, "train")
    assert len(name) <= 63
    assert name.endswith("-train")
    assert name == child_name(base, "train")
    assert child_name(base + "b", "train") != name or len(base) < 50


def test_server_deployment_verifies_digest_and_probes_bentoml() -> None:
    spec = DeploymentSpec(model_version="iris-v2", replicas=3)
    manifest = build_server_deployment(DEP_OWNER, spec, "iris-v2", VERSION, 2, CONFIG)
    assert manifest["metadata"]["name"] == server_name("iris", "iris-v2") == "iris-iris-v2"
    assert manifest["spec"]["replicas"] == 2
    server = container(manifest)
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["MLKUBE_MODEL_SHA256"] == "a" * 64
    assert env["MLKUBE_MODEL_URI"] == VERSION.artifact.uri
    # the names /v2/models/<name>/versions/<number> (Open Inference Protocol) go by
    assert (env["MLKUBE_MODEL_NAME"], env["MLKUBE_MODEL_VERSION_NUMBER"]) == (
        VERSION.model,
        str(VERSION.version),
    )
    assert (
        env["MLKUBE_INFERENCE_LOG_URI"] == "file:///var/lib/mlkube/artifacts/team-a/_inference/iris"
    )
    assert env["BENTOML_DO_NOT_TRACK"] == "true"
    assert env["BENTOML_HOME"].startswith("/tmp")
    assert server["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/livez"
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert labels[TRAFFIC_LABEL] == "on"
    selector = manifest["spec"]["selector"]["matchLabels"]
    assert TRAFFIC_LABEL not in selector, "patching the traffic label must not orphan pods"
    assert selector.items() <= labels.items()


def test_service_selects_every_version_in_traffic() -> None:
    spec = DeploymentSpec(model_version="iris-v2")
    service = build_service(DEP_OWNER, spec)
    assert service["metadata"]["name"] == "iris"
    assert service["spec"]["selector"] == {"mlkube.io/deployment": "iris", TRAFFIC_LABEL: "on"}
    per_version = build_service(DEP_OWNER, spec, "iris-v2")
    assert per_version["spec"]["selector"]["mlkube.io/model-version"] == "iris-v2"


def test_servers_and_services_name_the_http_and_grpc_ports() -> None:
    """gRPC (the Open Inference Protocol) on a port of its own, 8081 (KServe's) by default."""
    spec = DeploymentSpec(model_version="iris-v2", port=8000)
    server = container(build_server_deployment(DEP_OWNER, spec, "iris-v2", VERSION, 1, CONFIG))
    assert server["ports"] == [
        {"name": "http", "containerPort": 8000},
        {"name": "grpc", "containerPort": 8081},
    ]
    assert {"name": "MLKUBE_GRPC_PORT", "value": "8081"} in server["env"]
    for service in (build_service(DEP_OWNER, spec), build_service(DEP_OWNER, spec, "iris-v2")):
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert ports == {"http": (8000, "http"), "grpc": (8081, "grpc")}


def gateway_spec(**route: object) -> DeploymentSpec:
    spec: dict[str, object] = {
        "modelVersion": "iris-v2",
        "traffic": "GatewayAPI",
        "gateway": {"name": "gw", "namespace": "infra"},
    }
    if route:
        spec["route"] = route
    return DeploymentSpec.model_validate(spec)


def httproute(spec: DeploymentSpec, weights: dict[str, int]) -> dict:  # type: ignore[type-arg]
    return build_httproute(DEP_OWNER, spec, desired_route("team-a", "iris", spec), weights)


def test_httproute_splits_by_weight() -> None:
    route = httproute(gateway_spec(), {"iris-v1": 80, "iris-v2": 20})
    assert route["spec"]["parentRefs"] == [{"name": "gw", "namespace": "infra"}]
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("iris-iris-v1", 80), ("iris-iris-v2", 20)]


def test_httproute_without_hostnames_takes_the_deployments_own_path_and_strips_it() -> None:
    route = httproute(gateway_spec(), {"iris-v2": 100})
    assert "hostnames" not in route["spec"]
    rule = route["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/serving/team-a/iris"}}]
    # /serving/team-a/iris/predict reaches the server as /predict
    assert rule["filters"] == [
        {
            "type": "URLRewrite",
            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
        }
    ]


def test_httproute_with_hostnames_matches_them_at_the_root_unrewritten() -> None:
    spec = gateway_spec(hostnames=["iris.team-a.example.com", "*.iris.example.com"])
    route = httproute(spec, {"iris-v2": 100})
    assert route["spec"]["hostnames"] == ["iris.team-a.example.com", "*.iris.example.com"]
    rule = route["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert "filters" not in rule


def test_httproute_with_hostnames_and_a_path_prefix_rewrites_the_prefix() -> None:
    spec = gateway_spec(hostnames=["models.example.com"], pathPrefix="/iris")
    rule = httproute(spec, {"iris-v2": 100})["spec"]["rules"][0]
    assert rule["matches"][0]["path"]["value"] == "/iris"
    assert rule["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] == "/"


def test_autoscaler_only_when_asked() -> None:
    assert build_autoscaler(DEP_OWNER, DeploymentSpec(model_version="iris-v2"), "iris-v2") is None
    spec = DeploymentSpec.model_validate(
        {"modelVersion": "iris-v2", "autoscaling": {"maxReplicas": 5}}
    )
    hpa = build_autoscaler(DEP_OWNER, spec, "iris-v2")
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"]["name"] == "iris-iris-v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)


def test_cronjob_never_overlaps_and_checks_the_watched_versions_log() -> None:
    owner = Owner(kind="DriftMonitor", name="iris", namespace="team-a", uid="uid-3")
    spec = DriftMonitorSpec(deployment="iris", schedule="*/5 * * * *")
    version_dir = "file:///var/lib/mlkube/artifacts/team-a/iris/2"
    watched = Watched(f"{version_dir}/reference.parquet", "iris-v2", version_dir)
    cron = build_cronjob(owner, spec, watched, CONFIG)
    assert cron["metadata"]["name"] == cronjob_name("iris") == "iris-drift"
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    checker = container(cron, ("spec", "jobTemplate", "spec", "template", "spec"))
    args = checker["args"]
    assert args[0] == "drift"
    assert args[args.index("--log") + 1].endswith("/team-a/_inference/iris")
    assert args[args.index("--reference") + 1].endswith("reference.parquet")
    assert args[args.index("--model-version") + 1] == "iris-v2"
    assert args[args.index("--model-uri") + 1] == version_dir
    assert checker["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_verify_job_checks_every_recorded_file() -> None:
    owner = Owner(kind="ModelVersion", name="iris-v1", namespace="ns", uid="u")
    files = {"schema.json": "e" * 64, "reference.parquet": "f" * 64}
    job = build_verify_job(owner, "file:///a/ns/iris/1", "c" * 64, CONFIG, files)
    assert container(job)["args"][-4:] == [
        "--file", f"reference.parquet={'f' * 64}", "--file", f"schema.json={'e' * 64}",
    ]  # fmt: skip


def test_workload_pods_can_leave_the_uid_to_the_platform_and_pull_from_a_private_registry() -> None:
    openshift = OperatorConfig(workload_run_as_user=None, image_pull_secrets=("registry-key",))
    pod = build_job(TJ_OWNER, TRAINING, 1, openshift)["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["imagePullSecrets"] == [{"name": "registry-key"}]
    default = build_job(TJ_OWNER, TRAINING, 1, CONFIG)["spec"]["template"]["spec"]
    assert default["securityContext"]["runAsUser"] == 65532
    assert "imagePullSecrets" not in default
