"""Deployment (mlkube.io) -> one apps/v1 Deployment per served ModelVersion, a Service, an
HTTPRoute when traffic is split by the Gateway API, and a NetworkPolicy fencing the pods in.

Each version's pods carry `mlkube.io/traffic: "on"` from their template; the Service selects on it,
so a promoted version's predecessor can stay warm (pods running, label patched off) without
taking requests.
"""

from __future__ import annotations

from mlkube.api.deployment import DeploymentSpec
from mlkube.api.modelversion import ModelVersionSpec
from mlkube.builders.common import (
    Manifest,
    Owner,
    child_name,
    metadata,
    pod_spec,
    resources,
    restricted_security_context,
    storage_env,
    storage_env_from,
)
from mlkube.config import OperatorConfig
from mlkube.contract import DEPLOYMENT_LABEL
from mlkube.core.routes import Route
from mlkube.layout import inference_log_uri

SERVER = "server"
SERVER_APP = "mlkube-server"
TRAFFIC_LABEL = "mlkube.io/traffic"
VERSION_LABEL = "mlkube.io/model-version"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set on every namespace by the API server: selects a namespace by its name."""


def server_name(deployment: str, model_version: str) -> str:
    return child_name(deployment, model_version)


def server_labels(owner: Owner, model_version: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": SERVER_APP,
        DEPLOYMENT_LABEL: owner.name,
        VERSION_LABEL: model_version,
    }


def _probe(path: str, port: int, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def build_server_deployment(
    owner: Owner,
    spec: DeploymentSpec,
    model_version: str,
    version: ModelVersionSpec,
    replicas: int,
    config: OperatorConfig,
) -> Manifest:
    """The pods serving one ModelVersion; the digest travels along so the server can verify it."""
    labels = server_labels(owner, model_version)
    env: list[Manifest] = [
        {"name": "MLKUBE_MODEL_URI", "value": version.artifact.uri},
        {"name": "MLKUBE_MODEL_SHA256", "value": version.artifact.sha256},
        {"name": "MLKUBE_MODEL_VERSION", "value": model_version},
        # the Open Inference Protocol's and KServe v1's /v2/models/<name>/versions/<number>
        {"name": "MLKUBE_MODEL_NAME", "value": version.model},
        {"name": "MLKUBE_MODEL_VERSION_NUMBER", "value": str(version.version)},
        {"name": "MLKUBE_GRPC_PORT", "value": str(spec.grpc_port)},
        {
            "name": "MLKUBE_INFERENCE_LOG_URI",
            "value": inference_log_uri(config.artifact_root, owner.namespace, owner.name),
        },
        {"name": "MLKUBE_INFERENCE_LOG_MAX_BYTES", "value": str(config.inference_log_max_bytes)},
        {"name": "MLKUBE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "BENTOML_HOME", "value": "/tmp/bentoml"},
        {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
        {"name": "HOME", "value": "/tmp"},
        *storage_env(config),
    ]
    container: Manifest = {
        "name": SERVER,
        "image": spec.image or config.runtime_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["mlkube-runtime"],
        "args": ["serve", "--host", "0.0.0.0", "--port", str(spec.port)],
        "ports": [
            {"name": "http", "containerPort": spec.port},
            {"name": "grpc", "containerPort": spec.grpc_port},
        ],
        "env": env,
        "envFrom": storage_env_from(config),
        "resources": resources(spec.resources, {"cpu": "100m", "memory": "256Mi"}),
        "securityContext": restricted_security_context(),
        # /livez and /readyz refuse connections until the model is loaded: a startup probe
        # gives loading its time without a liveness restart loop.
        "startupProbe": _probe("/readyz", spec.port, period=2, failures=90),
        "readinessProbe": _probe("/readyz", spec.port, period=5, failures=3),
        "livenessProbe": _probe("/livez", spec.port, period=10, failures=3),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(server_name(owner.name, model_version), owner, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": {**labels, TRAFFIC_LABEL: "on"},
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec(container, config, restart_policy="Always"),
            },
        },
    }


def build_service(owner: Owner, spec: DeploymentSpec, model_version: str | None = None) -> Manifest:
    """The Deployment's Service; with `model_version`, the per-version one a route points at."""
    selector = {DEPLOYMENT_LABEL: owner.name, TRAFFIC_LABEL: "on"}
    name = owner.name
    if model_version is not None:
        selector[VERSION_LABEL] = model_version
        name = server_name(owner.name, model_version)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, owner, {DEPLOYMENT_LABEL: owner.name}),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"},
                # appProtocol: meshes and gateways carry it as HTTP/2 (gRPC) end to end
                {
                    "name": "grpc",
                    "port": spec.grpc_port,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }


def build_httproute(
    owner: Owner, spec: DeploymentSpec, route: Route, weights: dict[str, int]
) -> Manifest:
    """Gateway API route: the requests `route` matches, split between versions by weight.

    Under a path prefix other than `/` the prefix is replaced by `/` on the way (URLRewrite,
    ReplacePrefixMatch: `<prefix>/predict` reaches the server as `/predict`)."""
    parent: Manifest = {"name": route.gateway, "namespace": route.gateway_namespace}
    if route.section_name:
        parent["sectionName"] = route.section_name
    rule: Manifest = {
        "matches": [{"path": {"type": "PathPrefix", "value": route.path_prefix}}],
        "backendRefs": [
            {"name": server_name(owner.name, version), "port": spec.port, "weight": weight}
            for version, weight in sorted(weights.items())
        ],
    }
    if route.path_prefix != "/":
        rule["filters"] = [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
            }
        ]
    route_spec: Manifest = {"parentRefs": [parent], "rules": [rule]}
    if route.hostnames:
        route_spec["hostnames"] = list(route.hostnames)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(owner.name, owner, {DEPLOYMENT_LABEL: owner.name}),
        "spec": route_spec,
    }


def build_autoscaler(owner: Owner, spec: DeploymentSpec, model_version: str) -> Manifest | None:
    """An autoscaling/v2 HPA for the stable version's pods, when the spec asks for one."""
    if spec.autoscaling is None:
        return None
    target = server_name(owner.name, model_version)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner.name, owner, {DEPLOYMENT_LABEL: owner.name}),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": spec.autoscaling.min_replicas,
            "maxReplicas": spec.autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": spec.autoscaling.target_cpu_utilization_percent,
                        },
                    },
                }
            ],
        },
    }


def build_network_policy(
    owner: Owner, spec: DeploymentSpec, config: OperatorConfig
) -> Manifest | None:
    """Connections to the server pods' ports (HTTP and gRPC, the same peers for both) only from
    pods of their own namespace, of the gateway's, of the namespaces the spec and the chart
    allow, and from the API server's ranges
    (its service and pod proxy carry `predict` calls and the canary's scrapes); None when the
    chart or the spec turns the policy off."""
    if not (config.network_policy and spec.network_policy.enabled):
        return None
    namespaces = {*spec.network_policy.allowed_namespaces, *config.network_policy_namespaces}
    if spec.traffic == "GatewayAPI" and spec.gateway is not None:
        namespaces.add(spec.gateway.namespace or owner.namespace)
    peers: list[Manifest] = [{"podSelector": {}}]
    peers += [
        {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}
        for namespace in sorted(namespaces - {owner.namespace})
    ]
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in config.api_server_cidrs]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner.name, owner, {DEPLOYMENT_LABEL: owner.name}),
        "spec": {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": SERVER_APP,
                    DEPLOYMENT_LABEL: owner.name,
                }
            },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": peers,
                    "ports": [
                        {"protocol": "TCP", "port": spec.port},
                        {"protocol": "TCP", "port": spec.grpc_port},
                    ],
                }
            ],
        },
    }
