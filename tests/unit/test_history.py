"""The registry's record: a Deployment's history follows its rollouts, and a ModelVersion's status
says where it serves, under which aliases, and where it served."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mlkube.api.deployment import DeploymentSpec, DeploymentStatus, HistoryEntry
from mlkube.api.modelversion import ModelVersionStatus, ServingRecord
from mlkube.core.actions import action_value, pending_action, requester
from mlkube.core.analysis import CanaryMetrics
from mlkube.core.canary import Decision, Observation, decide
from mlkube.core.history import (
    OPERATOR,
    UNKNOWN,
    bounded,
    serving_versions,
    stale_versions,
    version_record,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
AT = "2026-11-27T12:00:00Z"
FAILING = CanaryMetrics(requests=100, errors=40, p95_latency_ms=20.0, prediction_shift=0.01)
SPEC = DeploymentSpec.model_validate(
    {
        "model": "iris",
        "latestApproved": True,
        "replicas": 2,
        "strategy": {"canary": {"steps": [{"setWeight": 50}, {"analysis": {}}]}},
    }
)


def step(status: DeploymentStatus, seconds: int, target: str, **observed: Any) -> DeploymentStatus:
    ready = {"iris-v1": 2, "iris-v2": 2, "iris-v3": 2}
    observation = Observation(target=target, ready_replicas=ready, **observed)
    decision: Decision = decide(SPEC, status, observation, T0 + timedelta(seconds=seconds), 1)
    return decision.status


def spans(status: DeploymentStatus) -> list[tuple[Any, ...]]:
    return [(e.version, e.role, e.reason, e.by, e.end_reason, e.ended_by) for e in status.history]


def entry(version: str, role: str, start: int, end: int | None = None) -> HistoryEntry:
    def at(minute: int) -> str:
        return (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")

    return HistoryEntry.model_validate(
        {
            "version": version,
            "role": role,
            "from": at(start),
            "to": None if end is None else at(end),
            "reason": "CanaryStarted" if role == "Canary" else "Initial",
            "by": OPERATOR,
        }
    )


def promoted_by_alice() -> DeploymentStatus:
    first = step(DeploymentStatus(), 0, "iris-v1")
    canary = step(first, 60, "iris-v2")
    return step(canary, 120, "iris-v2", action="promote-full", requester="alice@example.com")


def test_the_first_version_opens_a_stable_span_by_the_operator() -> None:
    first = step(DeploymentStatus(), 0, "iris-v1")
    assert spans(first) == [("iris-v1", "Stable", "Initial", OPERATOR, None, None)]
    assert first.history[0].from_ == AT
    assert first.history[0].to is None


def test_a_promotion_closes_canary_and_old_stable_and_opens_the_new_stable() -> None:
    status = promoted_by_alice()
    assert spans(status) == [
        ("iris-v1", "Stable", "Initial", OPERATOR, "Replaced", "alice@example.com"),
        ("iris-v2", "Canary", "CanaryStarted", OPERATOR, "Promoted", "alice@example.com"),
        ("iris-v2", "Stable", "Promoted", "alice@example.com", None, None),
    ]
    old_stable, canary, new_stable = status.history
    assert old_stable.to == canary.to == new_stable.from_ == "2026-11-27T12:02:00Z"
    assert canary.from_ == "2026-11-27T12:01:00Z"


def test_a_rollback_brings_the_previous_stable_back_and_says_who_asked() -> None:
    status = step(
        promoted_by_alice(), 180, "iris-v2", action="rollback", requester="bob@example.com"
    )
    assert spans(status)[2:] == [
        ("iris-v2", "Stable", "Promoted", "alice@example.com", "RolledBack", "bob@example.com"),
        ("iris-v1", "Stable", "RolledBack", "bob@example.com", None, None),
    ]
    held = step(status, 240, "iris-v2")
    assert held.history == status.history, "the held-back version does not start again"


def test_a_failed_analysis_ends_the_canary_by_the_operator() -> None:
    canary = step(step(DeploymentStatus(), 0, "iris-v1"), 60, "iris-v2")
    failed = step(canary, 95, "iris-v2", metrics=FAILING)
    assert failed.aborted_version == "iris-v2"
    assert spans(failed)[1] == (
        "iris-v2", "Canary", "CanaryStarted", OPERATOR, "AnalysisFailed", OPERATOR,
    )  # fmt: skip
    retried = step(failed, 120, "iris-v2", action="retry", requester="carol")
    assert spans(retried)[2] == ("iris-v2", "Canary", "Retried", "carol", None, None)


def test_an_action_that_names_nobody_is_by_unknown() -> None:
    canary = step(step(DeploymentStatus(), 0, "iris-v1"), 60, "iris-v2")
    aborted = step(canary, 70, "iris-v2", action="abort")
    assert spans(aborted)[1][4:] == ("Aborted", UNKNOWN)


def test_a_newer_version_replaces_the_canary_and_a_spec_back_to_stable_abandons_it() -> None:
    canary = step(step(DeploymentStatus(), 0, "iris-v1"), 60, "iris-v2")
    replaced = step(canary, 70, "iris-v3")
    assert [s[4] for s in spans(replaced)] == [None, "Replaced", None]
    abandoned = step(replaced, 80, "iris-v1")
    assert spans(abandoned)[2][4] == "Abandoned"
    assert [e.version for e in abandoned.history if e.to is None] == ["iris-v1"]


def test_deciding_again_on_the_same_status_changes_no_entry() -> None:
    """A restarted operator decides from status alone: nothing is recorded twice."""
    status = promoted_by_alice()
    assert step(status, 120, "iris-v2").history == status.history
    assert step(status, 900, "iris-v2").history == status.history


def test_a_deployment_older_than_the_record_starts_it_as_observed() -> None:
    older = DeploymentStatus(stable_version="iris-v1", canary_version="iris-v2", current_step=0)
    status = step(older, 0, "iris-v2")
    assert [(e.version, e.role, e.reason) for e in status.history] == [
        ("iris-v1", "Stable", "Observed"),
        ("iris-v2", "Canary", "Observed"),
    ]


def test_the_bound_drops_the_oldest_ended_spans_never_an_open_one() -> None:
    history = [entry("iris-v1", "Stable", 0)] + [
        entry(f"iris-v{n}", "Canary", n, n + 1) for n in range(2, 60)
    ]
    kept = bounded(history, limit=50)
    assert len(kept) == 50
    assert kept[0] == history[0], "the stable serving throughout stays"
    assert kept[1:] == history[-49:]
    assert bounded(history[:10], limit=50) == history[:10]


def test_a_version_stable_in_more_deployments_than_the_bound_keeps_the_newest_open_spans() -> None:
    """Past the schema's maxItems the whole status write would be refused (seen at 200
    Deployments of one version in the operator benchmark)."""
    deployments = {
        f"d{n:03}": DeploymentStatus(
            stable_version="iris-v1", history=[entry("iris-v1", "Stable", n)]
        )
        for n in range(60)
    }
    record = version_record("iris-v1", deployments, [], T0)
    assert len(record.history) == 50
    assert [r.deployment for r in record.history] == [f"d{n:03}" for n in range(10, 60)]
    assert len(record.serving_in) == 60, "servingIn still names every one"


def test_a_version_serving_in_two_deployments_has_a_role_and_alias_in_each() -> None:
    prod = DeploymentStatus(
        stable_version="iris-v2",
        previous_stable_version="iris-v1",
        history=[entry("iris-v1", "Stable", 0, 5), entry("iris-v2", "Stable", 5)],
    )
    staging = DeploymentStatus(
        stable_version="iris-v1",
        canary_version="iris-v2",
        history=[entry("iris-v1", "Stable", 0), entry("iris-v2", "Canary", 7)],
    )
    deployments = {"prod": prod, "staging": staging}
    v2 = version_record("iris-v2", deployments, [], T0)
    assert [(s.deployment, s.role, s.since) for s in v2.serving_in] == [
        ("prod", "Stable", "2026-11-27T12:05:00Z"),
        ("staging", "Canary", "2026-11-27T12:07:00Z"),
    ]
    assert v2.role == "Stable,Canary"
    assert [(a.name, a.deployment) for a in v2.aliases] == [
        ("champion", "prod"),
        ("challenger", "staging"),
    ]
    v1 = version_record("iris-v1", deployments, [], T0)
    assert [(s.deployment, s.role, s.since) for s in v1.serving_in] == [
        ("prod", "Previous", "2026-11-27T12:05:00Z"),
        ("staging", "Stable", AT),
    ]
    assert [a.deployment for a in v1.aliases] == ["staging"], "a warm previous has no alias"
    assert [(r.deployment, r.from_, r.to) for r in v1.history] == [
        ("prod", AT, "2026-11-27T12:05:00Z"),
        ("staging", AT, None),
    ]
    assert version_record("iris-v9", deployments, [], T0).role is None


def test_a_deleted_deployment_stays_in_the_versions_history_closed() -> None:
    prod = DeploymentStatus(stable_version="iris-v1", history=[entry("iris-v1", "Stable", 0)])
    served = version_record("iris-v1", {"prod": prod}, [], T0).history
    later = T0 + timedelta(hours=1)
    after = version_record("iris-v1", {}, served, later)
    assert after.serving_in == [] and after.aliases == [] and after.role is None
    assert [(r.deployment, r.to, r.end_reason) for r in after.history] == [
        ("prod", "2026-11-27T13:00:00Z", "DeploymentDeleted")
    ]
    assert version_record("iris-v1", {}, after.history, later).history == after.history


def test_spans_a_deployment_dropped_from_its_bounded_history_stay_on_the_version() -> None:
    old = ServingRecord.model_validate(
        {**entry("iris-v1", "Canary", 0, 1).model_dump(by_alias=True), "deployment": "prod"}
    )
    prod = DeploymentStatus(stable_version="iris-v1", history=[entry("iris-v1", "Stable", 2)])
    record = version_record("iris-v1", {"prod": prod}, [old], T0)
    assert [(r.role, r.to) for r in record.history] == [
        ("Canary", "2026-11-27T12:01:00Z"),
        ("Stable", None),
    ]


def test_versions_whose_status_does_not_show_a_change_yet_are_stale() -> None:
    before = step(step(DeploymentStatus(), 0, "iris-v1"), 60, "iris-v2")
    after = step(before, 120, "iris-v2", action="promote-full")
    assert serving_versions(after) == {"iris-v1", "iris-v2"}

    def recorded(status: DeploymentStatus) -> dict[str, ModelVersionStatus]:
        shown = {}
        for version in ("iris-v1", "iris-v2"):
            record = version_record(version, {"iris": status}, [], T0)
            shown[version] = ModelVersionStatus(
                serving_in=record.serving_in, history=record.history
            )
        return shown

    assert stale_versions("iris", before, after, recorded(before).get) == ["iris-v1", "iris-v2"]
    assert stale_versions("iris", before, after, recorded(after).get) == []
    assert stale_versions("iris", before, after, {}.get) == ["iris-v1", "iris-v2"], (
        "a ModelVersion the cache does not hold yet is asked once its spans change"
    )
    assert stale_versions("iris", after, after, {}.get) == [], "and only then"
    restarted = recorded(after)
    restarted["iris-v2"] = ModelVersionStatus()
    assert stale_versions("iris", after, after, restarted.get) == ["iris-v2"], (
        "after a restart, a version that does not show its role yet"
    )


def test_a_warm_previous_scaled_down_is_stale_until_its_record_drops_the_role() -> None:
    warm = DeploymentStatus(
        stable_version="iris-v2",
        previous_stable_version="iris-v1",
        history=[entry("iris-v1", "Stable", 0, 5), entry("iris-v2", "Stable", 5)],
    )
    scaled_down = warm.model_copy(update={"previous_stable_version": None})
    record = version_record("iris-v1", {"iris": warm}, [], T0)
    assert [s.role for s in record.serving_in] == ["Previous"]
    shown = {"iris-v1": ModelVersionStatus(serving_in=record.serving_in, history=record.history)}
    assert stale_versions("iris", warm, scaled_down, shown.get) == ["iris-v1"]


def test_an_action_carries_who_asked_and_is_still_carried_out_once() -> None:
    value = action_value("rollback", T0, "alice@example.com")
    assert value == "rollback@2026-11-27T12:00:00Z@alice@example.com"
    assert requester(value) == "alice@example.com"
    assert pending_action({"mlkube.io/action": value}, None) == ("rollback", value)
    assert pending_action({"mlkube.io/action": value}, value) is None
    assert requester(action_value("abort", T0)) is None
