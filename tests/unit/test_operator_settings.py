"""kopf's settings for the operator: a namespaced install serves its namespaces at once."""

from __future__ import annotations

import kopf
import pytest

from mlkube.controller.main import tune
from tests.unit.test_rbac import RELEASE, rendered


def scanning_env(*values: str) -> str:
    (operator,) = [
        d for d in rendered("--namespace", RELEASE, *values) if d["kind"] == "Deployment"
    ]
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    return str(env["MLKUBE_NAMESPACE_SCANNING"])


@pytest.mark.parametrize("scanning", [True, False])
def test_without_scanning_kopf_serves_the_named_namespaces_without_listing_any(
    scanning: bool,
) -> None:
    settings = kopf.OperatorSettings()
    tune(settings, scanning)
    assert settings.scanning.disabled is not scanning
    assert settings.persistence.finalizer == "mlkube.io/finalizer"


def test_only_a_namespaced_install_turns_namespace_scanning_off() -> None:
    """Plain names: the operator may not list namespaces, and kopf would retry that list for
    about a minute before serving anything; patterns and all-namespaces need the listing."""
    assert scanning_env("--set", "watchNamespaces={team-a,team-b}") == "false"
    assert scanning_env("--set", "watchNamespaces={team-*}") == "true"
    assert scanning_env() == "true"
