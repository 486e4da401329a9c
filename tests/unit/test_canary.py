"""The canary state machine, driven step by step as the operator's timer would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mlkube.api.deployment import DeploymentSpec, DeploymentStatus
from mlkube.core.analysis import CanaryMetrics
from mlkube.core.canary import (
    Decision,
    Observation,
    Workload,
    decide,
    evaluate_analysis,
)
from mlkube.core.conditions import condition_status

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HEALTHY = CanaryMetrics(requests=100, errors=0, p95_latency_ms=20.0, prediction_shift=0.01)
FAILING = CanaryMetrics(requests=100, errors=40, p95_latency_ms=20.0, prediction_shift=0.01)


def spec(**overrides: object) -> DeploymentSpec:
    base: dict[str, object] = {
        "modelVersion": "iris-v2",
        "replicas": 4,
        "strategy": {
            "canary": {
                "steps": [
                    {"setWeight": 25},
                    {"pause": {"seconds": 60}},
                    {"analysis": {}},
                    {"setWeight": 100},
                ],
                "scaleDownDelaySeconds": 300,
                "analysis": {"minRequestCount": 20, "intervalSeconds": 30},
            }
        },
    }
    base.update(overrides)
    return DeploymentSpec.model_validate(base)


def stable_on(version: str) -> DeploymentStatus:
    return DeploymentStatus(stable_version=version, phase="Healthy")


def step(
    s: DeploymentSpec,
    status: DeploymentStatus,
    now: datetime,
    target: str | None = "iris-v2",
    ready: dict[str, int] | None = None,
    **observed: object,
) -> Decision:
    ready = ready if ready is not None else {"iris-v1": 4, "iris-v2": 4}
    return decide(s, status, Observation(target=target, ready_replicas=ready, **observed), now, 1)  # type: ignore[arg-type]


def test_first_version_goes_straight_to_stable_and_is_healthy_once_ready() -> None:
    s = spec(modelVersion="iris-v1")
    pending = step(s, DeploymentStatus(), T0, target="iris-v1", ready={})
    assert pending.status.stable_version == "iris-v1"
    assert pending.status.canary_version is None
    assert pending.status.phase == "Progressing"
    assert pending.workloads == {"iris-v1": Workload(4, traffic=True)}
    assert condition_status(pending.status.conditions, "Ready") == "False"
    assert pending.requeue_after is not None

    ready = step(s, pending.status, T0, target="iris-v1", ready={"iris-v1": 4})
    assert ready.status.phase == "Healthy"
    assert condition_status(ready.status.conditions, "Ready") == "True"
    assert condition_status(ready.status.conditions, "Progressing") == "False"
    assert ready.status.observed_generation == 1


def test_new_version_walks_the_steps_and_is_promoted() -> None:
    s = spec()
    d = step(s, stable_on("iris-v1"), T0, ready={"iris-v1": 4})
    assert d.status.canary_version == "iris-v2"
    assert d.status.canary_weight == 25
    assert d.status.current_step == 0
    assert d.workloads == {"iris-v1": Workload(4, True), "iris-v2": Workload(1, True)}, (
        "canary pods first: the stable keeps its capacity until they are ready"
    )
    assert [e.reason for e in d.events] == ["CanaryStarted"]

    d = step(s, d.status, T0 + timedelta(seconds=5), ready={"iris-v1": 4, "iris-v2": 1})
    assert d.status.current_step == 1, "canary pods ready: on to the pause"
    assert d.workloads["iris-v1"] == Workload(3, True)
    assert d.requeue_after == 60

    d = step(s, d.status, T0 + timedelta(seconds=30))
    assert d.status.current_step == 1, "the pause has 35 s left"
    assert 30 <= (d.requeue_after or 0) <= 35

    d = step(
        s, d.status, T0 + timedelta(seconds=70), ready={"iris-v1": 1, "iris-v2": 1}, metrics=HEALTHY
    )
    assert d.status.last_analysis is not None
    assert d.status.last_analysis.result == "Passed"
    assert d.status.current_step == 3
    assert d.status.canary_weight == 100
    assert d.workloads["iris-v2"] == Workload(4, True), "waiting for the canary's pods"
    d = step(s, d.status, T0 + timedelta(seconds=75), metrics=HEALTHY)
    assert d.status.stable_version == "iris-v2"
    assert d.status.canary_version is None
    assert d.status.previous_stable_version == "iris-v1"
    assert d.status.phase == "Healthy"
    assert d.workloads["iris-v1"] == Workload(4, traffic=False), (
        "old stable stays warm, out of traffic"
    )
    assert d.workloads["iris-v2"] == Workload(4, traffic=True)
    assert "Promoted" in [e.reason for e in d.events]


def test_previous_stable_is_scaled_down_after_the_delay() -> None:
    status = DeploymentStatus(
        stable_version="iris-v2",
        previous_stable_version="iris-v1",
        scale_down_at="2026-11-27T12:05:00Z",
    )
    warm = step(spec(), status, T0 + timedelta(minutes=4))
    assert "iris-v1" in warm.workloads
    assert warm.requeue_after == 60
    gone = step(spec(), status, T0 + timedelta(minutes=5))
    assert "iris-v1" not in gone.workloads
    assert gone.status.previous_stable_version is None


def test_failing_analysis_rolls_back_and_keeps_stable_serving() -> None:
    s = spec()
    status = DeploymentStatus(
        stable_version="iris-v1",
        canary_version="iris-v2",
        current_step=2,
        canary_weight=25,
        step_started_at="2026-11-27T12:00:00Z",
    )
    d = step(s, status, T0 + timedelta(seconds=1), metrics=FAILING)
    assert d.status.canary_version is None
    assert d.status.aborted_version == "iris-v2"
    assert d.status.phase == "Degraded"
    degraded = next(c for c in d.status.conditions if c.type == "Degraded")
    assert degraded.status == "True"
    assert degraded.reason == "AnalysisFailed"
    assert "error rate 40.00%" in degraded.message
    assert d.workloads == {"iris-v1": Workload(4, True)}
    assert condition_status(d.status.conditions, "Ready") == "True"
    assert [e.type for e in d.events if e.reason == "RolledBack"] == ["Warning"]
    later = step(s, d.status, T0 + timedelta(seconds=30), metrics=FAILING)
    kept = next(c for c in later.status.conditions if c.type == "Degraded")
    assert (kept.reason, kept.message) == (degraded.reason, degraded.message), (
        "the failing figure stays"
    )


def test_rolled_back_version_is_not_retried_until_asked() -> None:
    status = DeploymentStatus(stable_version="iris-v1", aborted_version="iris-v2")
    held = step(spec(), status, T0)
    assert held.status.canary_version is None
    assert held.status.phase == "Degraded"
    retried = step(spec(), status, T0, action="retry")
    assert retried.status.canary_version == "iris-v2"
    assert retried.status.handled_action == "retry"


def test_background_analysis_catches_a_failing_canary_during_a_pause() -> None:
    status = DeploymentStatus(
        stable_version="iris-v1",
        canary_version="iris-v2",
        current_step=1,
        canary_weight=25,
        step_started_at="2026-11-27T12:00:00Z",
    )
    d = step(spec(), status, T0 + timedelta(seconds=10), metrics=FAILING)
    assert d.status.aborted_version == "iris-v2"


def test_failure_limit_tolerates_one_bad_analysis() -> None:
    s = spec(
        strategy={
            "canary": {
                "steps": [{"analysis": {}}],
                "analysis": {"failureLimit": 2, "intervalSeconds": 30},
            }
        }
    )
    status = DeploymentStatus(stable_version="iris-v1")
    d = step(s, status, T0, metrics=FAILING)
    assert d.status.canary_version == "iris-v2"
    assert d.status.analysis_failures == 1
    d = step(s, d.status, T0 + timedelta(seconds=10), metrics=FAILING)
    assert d.status.analysis_failures == 1, "not measured again before the interval"
    d = step(s, d.status, T0 + timedelta(seconds=31), metrics=FAILING)
    assert d.status.aborted_version == "iris-v2"


def test_too_little_traffic_is_inconclusive_then_pauses() -> None:
    s = spec(
        strategy={
            "canary": {
                "steps": [{"analysis": {}}],
                "analysis": {"inconclusiveLimit": 2, "intervalSeconds": 10, "minRequestCount": 50},
            }
        }
    )
    quiet = CanaryMetrics(requests=3, errors=0)
    d = step(s, DeploymentStatus(stable_version="iris-v1"), T0, metrics=quiet)
    assert d.status.last_analysis is not None
    assert d.status.last_analysis.result == "Inconclusive"
    assert d.status.phase == "Progressing"
    d = step(s, d.status, T0 + timedelta(seconds=11), metrics=quiet)
    assert d.status.phase == "Paused"
    assert "AnalysisInconclusive" in [e.reason for e in d.events]
    d = step(s, d.status, T0 + timedelta(seconds=22), metrics=HEALTHY)
    assert d.status.canary_weight == 100 or d.status.stable_version == "iris-v2"


def test_indefinite_pause_waits_for_promote() -> None:
    s = spec(strategy={"canary": {"steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]}})
    d = step(s, DeploymentStatus(stable_version="iris-v1"), T0)
    assert d.status.phase == "Paused"
    assert d.status.current_step == 1
    d = step(s, d.status, T0 + timedelta(hours=5))
    assert d.status.phase == "Paused"
    d = step(s, d.status, T0 + timedelta(hours=5), action="promote")
    assert d.status.stable_version == "iris-v2"


def test_abort_rolls_back_without_touching_the_spec() -> None:
    s = spec()
    before = s.model_dump()
    d = step(s, DeploymentStatus(stable_version="iris-v1"), T0, action="abort")
    assert d.status.aborted_version == "iris-v2"
    assert next(c for c in d.status.conditions if c.type == "Degraded").reason == "Aborted"
    assert s.model_dump() == before


def test_promote_full_skips_every_step() -> None:
    d = step(spec(), DeploymentStatus(stable_version="iris-v1"), T0, action="promote-full")
    assert d.status.stable_version == "iris-v2"
    assert d.status.previous_stable_version == "iris-v1"


def test_rollback_returns_to_the_warm_previous_stable() -> None:
    status = DeploymentStatus(
        stable_version="iris-v2",
        previous_stable_version="iris-v1",
        scale_down_at="2026-11-27T12:05:00Z",
    )
    d = step(spec(), status, T0, action="rollback")
    assert d.status.stable_version == "iris-v1"
    assert d.status.aborted_version == "iris-v2"
    assert d.status.phase == "Degraded"
    assert d.workloads == {"iris-v1": Workload(4, True)}


def test_rollback_without_a_warm_version_is_refused() -> None:
    d = step(spec(), DeploymentStatus(stable_version="iris-v2"), T0, action="rollback")
    assert d.status.stable_version == "iris-v2"
    assert [e.reason for e in d.events] == ["RollbackRefused"]


def test_spec_reverted_to_the_warm_previous_version_switches_back_at_once() -> None:
    status = DeploymentStatus(
        stable_version="iris-v2",
        previous_stable_version="iris-v1",
        scale_down_at="2026-11-27T12:05:00Z",
    )
    d = step(spec(modelVersion="iris-v1"), status, T0, target="iris-v1")
    assert d.status.stable_version == "iris-v1"
    assert d.status.canary_version is None
    assert "FastRollback" in [e.reason for e in d.events]


def test_spec_returning_to_stable_abandons_the_canary() -> None:
    status = DeploymentStatus(stable_version="iris-v1", canary_version="iris-v2", current_step=1)
    d = step(spec(modelVersion="iris-v1"), status, T0, target="iris-v1")
    assert d.status.canary_version is None
    assert d.workloads == {"iris-v1": Workload(4, True)}


def test_a_newer_target_replaces_the_running_canary() -> None:
    status = DeploymentStatus(stable_version="iris-v1", canary_version="iris-v2", current_step=1)
    d = step(spec(modelVersion="iris-v3"), status, T0, target="iris-v3")
    assert d.status.canary_version == "iris-v3"
    assert d.status.current_step == 0
    assert [e.reason for e in d.events] == ["CanaryReplaced", "CanaryStarted"]


def test_missing_target_keeps_stable_serving_and_says_why() -> None:
    d = decide(
        spec(),
        DeploymentStatus(stable_version="iris-v1"),
        Observation(
            target=None,
            target_problem=("ModelVersionNotFound", "ModelVersion iris-v9 does not exist"),
            ready_replicas={"iris-v1": 4},
        ),
        T0,
    )
    assert d.workloads == {"iris-v1": Workload(4, True)}
    degraded = next(c for c in d.status.conditions if c.type == "Degraded")
    assert degraded.reason == "ModelVersionNotFound"
    assert "iris-v9" in degraded.message


def test_nothing_to_serve_is_pending_with_the_reason() -> None:
    d = decide(
        spec(),
        DeploymentStatus(),
        Observation(target=None, target_problem=("NotApproved", "iris-v2 is not approved")),
        T0,
    )
    assert d.status.phase == "Pending"
    assert d.workloads == {}
    assert d.requeue_after == 5, "keeps looking for the version to become servable"
    ready = next(c for c in d.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "NotApproved")


def test_restart_resumes_from_status_alone() -> None:
    """A fresh decide() on the stored status gives the same result as the running machine."""
    s = spec()
    d1 = step(s, stable_on("iris-v1"), T0, ready={"iris-v1": 4})
    stored = DeploymentStatus.model_validate(d1.status.to_api())
    d2 = step(s, stored, T0 + timedelta(seconds=5), ready={"iris-v1": 3, "iris-v2": 1})
    assert d2.status.current_step == 1
    assert not [e for e in d2.events if e.reason == "CanaryStarted"], "nothing started twice"


def test_condition_transition_time_is_kept_while_status_holds() -> None:
    s = spec(modelVersion="iris-v1")
    d1 = step(s, DeploymentStatus(), T0, target="iris-v1", ready={"iris-v1": 4})
    d2 = step(s, d1.status, T0 + timedelta(minutes=3), target="iris-v1", ready={"iris-v1": 4})
    ready1 = next(c for c in d1.status.conditions if c.type == "Ready")
    ready2 = next(c for c in d2.status.conditions if c.type == "Ready")
    assert ready1.last_transition_time == ready2.last_transition_time == "2026-11-27T12:00:00Z"


def test_analysis_reports_each_failing_figure() -> None:
    s = spec()
    analysis = s.strategy.canary.analysis
    slow_and_shifted = CanaryMetrics(
        requests=50, errors=0, p95_latency_ms=900.0, prediction_shift=0.6
    )
    result = evaluate_analysis(analysis, slow_and_shifted, T0)
    assert result.result == "Failed"
    assert "p95 latency 900.0 ms exceeds maxP95LatencyMs 500" in result.message
    assert "prediction shift 0.6000 exceeds maxPredictionShift 0.25" in result.message
    assert evaluate_analysis(analysis, None, T0).result == "Inconclusive"
    assert evaluate_analysis(analysis, HEALTHY, T0).result == "Passed"


def test_gateway_weights_follow_the_canary_step() -> None:
    s = spec(traffic="GatewayAPI", gateway={"name": "gw"})
    d = step(s, DeploymentStatus(stable_version="iris-v1"), T0)
    assert d.weights == {"iris-v1": 75, "iris-v2": 25}


def test_a_canary_that_never_becomes_ready_rolls_back_at_its_progress_deadline() -> None:
    s = spec(replicas=2)
    d = step(s, stable_on("iris-v1"), T0, ready={"iris-v1": 2})
    assert d.workloads["iris-v1"] == Workload(2, True), "the stable keeps both pods"
    d = step(s, d.status, T0 + timedelta(seconds=599), ready={"iris-v1": 2, "iris-v2": 0})
    assert d.status.canary_version == "iris-v2"
    assert d.workloads["iris-v1"] == Workload(2, True)
    assert d.requeue_after is not None
    assert d.requeue_after <= 5
    d = step(s, d.status, T0 + timedelta(seconds=600), ready={"iris-v1": 2, "iris-v2": 0})
    assert d.status.canary_version is None
    assert d.status.aborted_version == "iris-v2"
    assert d.status.phase == "Degraded"
    degraded = next(c for c in d.status.conditions if c.type == "Degraded")
    assert degraded.reason == "ProgressDeadlineExceeded"
    assert "0 of 1 canary pods ready after 600s" in degraded.message
    assert ("ProgressDeadlineExceeded", "Warning") in [(e.reason, e.type) for e in d.events]
    assert d.workloads == {"iris-v1": Workload(2, True)}


def test_the_progress_deadline_is_a_spec_field() -> None:
    s = spec(strategy={"canary": {"steps": [{"setWeight": 100}], "progressDeadlineSeconds": 30}})
    d = step(s, stable_on("iris-v1"), T0, ready={"iris-v1": 4})
    d = step(s, d.status, T0 + timedelta(seconds=31), ready={"iris-v1": 4, "iris-v2": 3})
    assert d.status.aborted_version == "iris-v2"


def test_no_gateway_weight_moves_to_a_canary_without_ready_pods() -> None:
    s = spec(traffic="GatewayAPI", gateway={"name": "gw"})
    d = step(s, DeploymentStatus(stable_version="iris-v1"), T0, ready={"iris-v1": 4})
    assert d.status.canary_weight == 25
    assert d.weights == {"iris-v1": 100, "iris-v2": 0}
    d = step(s, d.status, T0 + timedelta(seconds=5), ready={"iris-v1": 4, "iris-v2": 1})
    assert d.weights == {"iris-v1": 75, "iris-v2": 25}


AUTOSCALED = {"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}


def test_with_autoscaling_the_live_stable_count_is_kept_and_sizes_the_canary() -> None:
    s = spec(replicas=2, **AUTOSCALED)
    healthy = step(s, stable_on("iris-v1"), T0, target="iris-v1", ready={"iris-v1": 4},
                   live_replicas={"iris-v1": 4})  # fmt: skip
    assert healthy.workloads == {"iris-v1": Workload(4, True, autoscaled=True)}, (
        "scaled to 4 by hand or by the HPA: left alone"
    )
    d = step(s, stable_on("iris-v1"), T0, ready={"iris-v1": 4}, live_replicas={"iris-v1": 4})
    assert d.workloads == {
        "iris-v1": Workload(4, True, autoscaled=True),
        "iris-v2": Workload(2, True),
    }, "25% of 6 pods: 2 canary pods next to the HPA's 4"


def test_a_promoted_version_starts_with_at_least_the_old_stables_count() -> None:
    s = spec(replicas=2, strategy={"canary": {"steps": [{"setWeight": 100}]}}, **AUTOSCALED)
    status = DeploymentStatus(stable_version="iris-v1", canary_version="iris-v2", current_step=1,
                              canary_weight=100, step_started_at="2026-11-27T12:00:00Z")  # fmt: skip
    d = step(s, status, T0, ready={"iris-v1": 5, "iris-v2": 5},
             live_replicas={"iris-v1": 5, "iris-v2": 5})  # fmt: skip
    assert d.status.stable_version == "iris-v2"
    assert d.workloads["iris-v2"] == Workload(5, True, autoscaled=True)
    assert d.workloads["iris-v1"] == Workload(5, traffic=False)


def test_the_scale_down_is_scheduled_by_the_promotion_itself() -> None:
    s = spec(strategy={"canary": {"steps": [], "scaleDownDelaySeconds": 120}})
    d = step(s, stable_on("iris-v1"), T0, ready={"iris-v1": 4, "iris-v2": 4})
    assert d.status.stable_version == "iris-v2"
    assert d.status.previous_stable_version == "iris-v1"
    assert d.requeue_after == 120, "nothing else would bring the pinned Deployment back"


IRIS = frozenset({"sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"})


def test_a_version_needing_new_input_columns_is_refused_before_any_traffic() -> None:
    columns = {"iris-v1": IRIS, "iris-v2": IRIS | {"petal_area"}}
    d = step(spec(), stable_on("iris-v1"), T0, input_columns=columns)
    assert d.status.canary_version is None
    assert d.status.phase == "Degraded"
    degraded = next(c for c in d.status.conditions if c.type == "Degraded")
    assert degraded.reason == "SchemaIncompatible"
    assert "petal_area" in degraded.message
    assert [e.reason for e in d.events] == ["SchemaIncompatible"]
    again = step(spec(), d.status, T0 + timedelta(seconds=5), input_columns=columns)
    assert again.events == [], "said once"
    assert set(d.workloads) == {"iris-v1"}


def test_schema_changes_roll_out_when_the_spec_allows_them() -> None:
    columns = {"iris-v1": IRIS, "iris-v2": IRIS | {"petal_area"}}
    s = spec(strategy={"canary": {"steps": [{"setWeight": 50}, {"setWeight": 100}],
                                  "allowSchemaChanges": True}})  # fmt: skip
    d = step(s, stable_on("iris-v1"), T0, ready={"iris-v1": 4}, input_columns=columns)
    assert d.status.canary_version == "iris-v2"
    fewer = {"iris-v1": IRIS, "iris-v2": IRIS - {"petal_width_cm"}}
    assert (
        step(spec(), stable_on("iris-v1"), T0, input_columns=fewer).status.canary_version
        == "iris-v2"
    )


def pod(requests: int, errors: int = 0) -> dict[str, float]:
    return {"requests|2xx": requests - errors, "requests|5xx": errors, "label|0": requests - errors}


def test_a_failure_long_ago_is_not_held_against_the_next_window() -> None:
    analysis = {"minRequestCount": 20, "intervalSeconds": 30, "failureLimit": 2}
    steps = [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}]
    s = spec(strategy={"canary": {"steps": steps, "analysis": analysis}})
    status = DeploymentStatus(
        stable_version="iris-v1",
        canary_version="iris-v2",
        current_step=1,
        canary_weight=50,
        step_started_at="2026-11-27T12:00:00Z",
        analysis_baseline={},  # the window opened when the pods started
    )
    bad = {"canary/p": pod(100, 50), "stable/q": pod(100)}
    d = step(s, status, T0, counters=bad)
    assert d.status.last_analysis is not None
    assert d.status.last_analysis.result == "Failed"
    assert d.status.analysis_failures == 1
    assert d.status.analysis_baseline == bad
    recovered = {"canary/p": pod(200, 50), "stable/q": pod(200)}
    d = step(s, d.status, T0 + timedelta(seconds=30), counters=recovered)
    assert d.status.stable_version == "iris-v2", "100 new requests, none failed: promoted"


def test_an_indefinite_pause_keeps_analysing_in_the_background() -> None:
    s = spec(strategy={"canary": {"steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}],
                                  "analysis": {"minRequestCount": 20, "intervalSeconds": 30}}})  # fmt: skip
    status = DeploymentStatus(stable_version="iris-v1", canary_version="iris-v2", current_step=1,
                              canary_weight=50, step_started_at="2026-11-27T12:00:00Z",
                              analysis_baseline={})  # fmt: skip
    d = step(s, status, T0, counters={"canary/p": pod(10), "stable/q": pod(10)})
    assert d.status.phase == "Paused"
    assert d.requeue_after == 30, "it comes back to look"
    d = step(s, d.status, T0 + timedelta(seconds=30),
             counters={"canary/p": pod(100, 60), "stable/q": pod(100)})  # fmt: skip
    assert d.status.aborted_version == "iris-v2"


def labelled_pod(requests: int, labelled: int, correct: int) -> dict[str, float]:
    return {**pod(requests), "live|labelled": labelled, "live|correct": correct}


def test_a_canary_waits_for_labels_then_rolls_back_on_worse_live_accuracy() -> None:
    analysis = {"minRequestCount": 20, "intervalSeconds": 30, "minLabelledRows": 50,
                "maxQualityDrop": "0.1"}  # fmt: skip
    steps = [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}]
    s = spec(strategy={"canary": {"steps": steps, "analysis": analysis}})
    status = DeploymentStatus(stable_version="iris-v1", canary_version="iris-v2", current_step=1,
                              canary_weight=50, step_started_at="2026-11-27T12:00:00Z",
                              analysis_baseline={})  # fmt: skip
    few = {"canary/p": labelled_pod(100, 10, 5), "stable/q": labelled_pod(100, 80, 76)}
    d = step(s, status, T0, counters=few)
    assert d.status.last_analysis is not None
    assert d.status.last_analysis.result == "Inconclusive"
    assert (d.status.current_step, d.status.analysis_baseline) == (1, {}), "the window grows"
    enough = {"canary/p": labelled_pod(200, 60, 30), "stable/q": labelled_pod(200, 160, 150)}
    d = step(s, d.status, T0 + timedelta(seconds=30), counters=enough)
    assert d.status.aborted_version == "iris-v2"
    assert d.status.last_analysis is not None
    assert "live Accuracy 0.5 is 0.4375 worse than the stable's 0.9375" in (
        d.status.last_analysis.message
    )


def client_errors_pod(requests: int, client_errors: int) -> dict[str, float]:
    return {"requests|2xx": requests - client_errors, "requests|4xx": client_errors,
            "label|0": requests - client_errors}  # fmt: skip


def test_the_first_window_opens_when_the_canarys_pods_take_traffic_on_both_sides_at_once() -> None:
    """The stable's good requests from before the canary do not dilute its 4xx rate: a flood
    of bad requests spread over both versions afterwards is not blamed on the canary."""
    steps = [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}]
    s = spec(replicas=1, strategy={"canary": {"steps": steps, "analysis": {
        "minRequestCount": 30, "intervalSeconds": 5, "maxErrorRatePercent": "5"}}})  # fmt: skip
    d = step(s, stable_on("iris-v1"), T0, ready={"iris-v1": 1})  # no canary: nothing scraped
    assert d.status.canary_version == "iris-v2"
    assert d.status.analysis_baseline is None, "no window before the canary takes traffic"
    before = {"stable/q": client_errors_pod(5000, 0)}
    d = step(s, d.status, T0 + timedelta(seconds=5), ready={"iris-v1": 1, "iris-v2": 0},
             counters=before)  # fmt: skip
    assert d.status.analysis_baseline is None, "the canary's pods are not ready yet"
    opened = {"canary/p": client_errors_pod(2, 0), "stable/q": client_errors_pod(5010, 0)}
    d = step(s, d.status, T0 + timedelta(seconds=10), ready={"iris-v1": 1, "iris-v2": 1},
             counters=opened)  # fmt: skip
    assert d.status.analysis_baseline == opened
    flooded = {"canary/p": client_errors_pod(102, 40), "stable/q": client_errors_pod(5110, 40)}
    d = step(s, d.status, T0 + timedelta(seconds=20), ready={"iris-v1": 1, "iris-v2": 1},
             counters=flooded)  # fmt: skip
    assert d.status.last_analysis is not None
    assert d.status.last_analysis.result == "Passed", d.status.last_analysis.message
    assert d.status.stable_version == "iris-v2"


def test_a_canary_refusing_what_the_stable_accepts_fails_in_the_first_window() -> None:
    steps = [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}]
    s = spec(replicas=1, strategy={"canary": {"steps": steps, "analysis": {
        "minRequestCount": 30, "intervalSeconds": 5, "maxErrorRatePercent": "5"}}})  # fmt: skip
    status = DeploymentStatus(stable_version="iris-v1", canary_version="iris-v2", current_step=0,
                              canary_weight=50, step_started_at="2026-11-27T12:00:00Z")  # fmt: skip
    opened = {"canary/p": client_errors_pod(0, 0), "stable/q": client_errors_pod(500, 0)}
    d = step(s, status, T0, ready={"iris-v1": 1, "iris-v2": 1}, counters=opened)
    refusing = {"canary/p": client_errors_pod(100, 40), "stable/q": client_errors_pod(600, 1)}
    d = step(s, d.status, T0 + timedelta(seconds=10), ready={"iris-v1": 1, "iris-v2": 1},
             counters=refusing)  # fmt: skip
    assert d.status.aborted_version == "iris-v2"
    assert d.status.last_analysis is not None
    assert "exceeds maxErrorRatePercent 5" in d.status.last_analysis.message
