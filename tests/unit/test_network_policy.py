"""The NetworkPolicy fencing a Deployment's model servers in: who it lets in, and when there is
none."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mlkube.api.deployment import DeploymentSpec
from mlkube.builders.common import Owner
from mlkube.builders.serving import build_network_policy, server_labels
from mlkube.config import OperatorConfig

OWNER = Owner(kind="Deployment", name="iris", namespace="team-a", uid="uid-2")
CONFIG = OperatorConfig()


def spec(**fields: Any) -> DeploymentSpec:
    return DeploymentSpec.model_validate({"modelVersion": "iris-v1", **fields})


def policy(deployment: DeploymentSpec, config: OperatorConfig = CONFIG) -> dict[str, Any]:
    built = build_network_policy(OWNER, deployment, config)
    assert built is not None
    return built


def peers(deployment: DeploymentSpec, config: OperatorConfig = CONFIG) -> list[dict[str, Any]]:
    rules = policy(deployment, config)["spec"]["ingress"]
    assert len(rules) == 1
    return list(rules[0]["from"])


def by_name(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def test_by_default_only_the_own_namespace_reaches_the_servers_ports() -> None:
    """HTTP's and gRPC's port, from the same peers."""
    built = policy(spec(port=8080, grpcPort=9090))
    assert built["apiVersion"] == "networking.k8s.io/v1"
    assert built["kind"] == "NetworkPolicy"
    meta = built["metadata"]
    assert (meta["name"], meta["namespace"]) == ("iris", "team-a")
    assert meta["ownerReferences"] == [OWNER.reference()], "deleted with the Deployment"
    assert built["spec"]["policyTypes"] == ["Ingress"], "egress stays open (object storage)"
    assert built["spec"]["ingress"] == [
        {
            "from": [{"podSelector": {}}],
            "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 9090}],
        }
    ]


def test_it_selects_every_version_of_this_deployments_servers_and_nothing_else() -> None:
    selector = policy(spec())["spec"]["podSelector"]["matchLabels"]
    for version in ("iris-v1", "iris-v2"):
        labels = server_labels(OWNER, version)
        assert selector.items() <= labels.items()
    other = server_labels(Owner("Deployment", "other", "team-a", "uid-3"), "iris-v1")
    assert not selector.items() <= other.items()
    assert "mlkube.io/model-version" not in selector, "a canary's pods are fenced in too"


def test_the_gateways_namespace_is_let_in_only_with_gateway_api_traffic() -> None:
    gateway = {"traffic": "GatewayAPI", "gateway": {"name": "public", "namespace": "gateways"}}
    assert peers(spec(**gateway)) == [{"podSelector": {}}, by_name("gateways")]
    replicas = {"traffic": "Replicas", "gateway": {"name": "public", "namespace": "gateways"}}
    assert peers(spec(**replicas)) == [{"podSelector": {}}]
    same = {"traffic": "GatewayAPI", "gateway": {"name": "public"}}
    assert peers(spec(**same)) == [{"podSelector": {}}], "its own namespace is in already"


def test_spec_and_chart_namespaces_and_api_server_ranges_are_added_once_each() -> None:
    config = OperatorConfig(
        network_policy_namespaces=("monitoring", "team-b"),
        api_server_cidrs=("10.0.0.0/24", "fd00::/64"),
    )
    deployment = spec(
        traffic="GatewayAPI",
        gateway={"name": "public", "namespace": "team-b"},
        networkPolicy={"allowedNamespaces": ["team-c", "team-b", "team-a"]},
    )
    assert peers(deployment, config) == [
        {"podSelector": {}},
        by_name("monitoring"),
        by_name("team-b"),
        by_name("team-c"),
        {"ipBlock": {"cidr": "10.0.0.0/24"}},
        {"ipBlock": {"cidr": "fd00::/64"}},
    ]


def test_turned_off_by_the_spec_or_the_chart_there_is_none() -> None:
    assert build_network_policy(OWNER, spec(networkPolicy={"enabled": False}), CONFIG) is None
    assert build_network_policy(OWNER, spec(), OperatorConfig(network_policy=False)) is None


def test_the_spec_bounds_its_namespaces() -> None:
    with pytest.raises(ValidationError):
        spec(networkPolicy={"allowedNamespaces": [f"team-{i}" for i in range(17)]})
    with pytest.raises(ValidationError):
        spec(networkPolicy={"allowedNamespaces": ["Not_A_Namespace"]})


def test_the_chart_values_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLKUBE_NETWORK_POLICY", raising=False)
    assert OperatorConfig.from_env().network_policy is True, "on by default"
    monkeypatch.setenv("MLKUBE_NETWORK_POLICY", "false")
    monkeypatch.setenv("MLKUBE_NETWORK_POLICY_NAMESPACES", "monitoring, team-b")
    monkeypatch.setenv("MLKUBE_API_SERVER_CIDRS", "10.0.0.0/24")
    config = OperatorConfig.from_env()
    assert config.network_policy is False
    assert config.network_policy_namespaces == ("monitoring", "team-b")
    assert config.api_server_cidrs == ("10.0.0.0/24",)
    with pytest.raises(ValueError, match="MLKUBE_API_SERVER_CIDRS"):
        OperatorConfig(api_server_cidrs=("10.0.0.1/24",))
