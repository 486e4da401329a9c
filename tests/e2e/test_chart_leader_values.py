"""What the chart renders for more than one operator replica and for the scrape bounds
(``helm template``; no cluster needed)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.e2e.test_chart_values import env_of, render


def documents(*values: str) -> dict[str, dict[str, Any]]:
    done = render("--namespace", "mlkube-system", *values)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_one_replica_is_replaced_two_roll_with_a_disruption_budget() -> None:
    one = documents()
    assert one["Deployment/mlkube-operator"]["spec"]["strategy"] == {"type": "Recreate"}
    assert "PodDisruptionBudget/mlkube-operator" not in one
    two = documents("--set", "replicas=2")
    operator = two["Deployment/mlkube-operator"]["spec"]
    assert operator["replicas"] == 2
    assert operator["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    budget = two["PodDisruptionBudget/mlkube-operator"]
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == operator["selector"]["matchLabels"]
    assert render("--set", "replicas=0").returncode != 0


def test_the_lease_is_named_per_watched_scope_in_the_release_namespace() -> None:
    def lease(*values: str) -> str:
        pod = documents(*values)["Deployment/mlkube-operator"]["spec"]["template"]["spec"]
        return env_of(pod)["MLKUBE_LEADER_ELECTION_LEASE"]

    assert lease() == "mlkube-system/mlkube-operator"
    team_a = lease("--set", "watchNamespaces={team-a}")
    assert team_a.startswith("mlkube-system/mlkube-operator-")
    assert team_a != lease("--set", "watchNamespaces={team-b}")
    role = documents("--set", "watchNamespaces={team-a}")["Role/mlkube-operator-leader"]
    assert role["metadata"]["namespace"] == "mlkube-system"
    assert role["rules"][1]["resourceNames"] == [team_a.split("/")[1]]


def test_scrape_bounds_reach_the_operator() -> None:
    values = ("--set", "scrape.timeoutSeconds=3", "--set", "scrape.maxBytes=1048576")
    pod = documents(*values)["Deployment/mlkube-operator"]["spec"]["template"]["spec"]
    env = env_of(pod)
    assert (env["MLKUBE_SCRAPE_TIMEOUT_SECONDS"], env["MLKUBE_SCRAPE_MAX_BYTES"]) == (
        "3",
        "1048576",
    )
    assert (
        env_of(documents()["Deployment/mlkube-operator"]["spec"]["template"]["spec"])[
            "MLKUBE_SCRAPE_MAX_BYTES"
        ]
        == "4194304"
    )
    assert "/scrape/timeoutSeconds" in render("--set", "scrape.timeoutSeconds=60").stderr
