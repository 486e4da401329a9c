"""Every wait of a Deployment has a reason and an end: a first rollout whose pods never get
ready fails at its progress deadline, as a canary does, and the pods' own trouble (a quota, an
unschedulable pod, an image) is named in the conditions while it waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mlkube.api.deployment import DeploymentSpec, DeploymentStatus
from mlkube.core.canary import Decision, Observation, decide
from mlkube.core.conditions import condition

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
UNSCHEDULABLE = ("Unschedulable", "0/1 nodes are available: 1 Insufficient cpu.")
SPEC = DeploymentSpec.model_validate(
    {
        "modelVersion": "iris-v1",
        "replicas": 2,
        "strategy": {"canary": {"progressDeadlineSeconds": 120}},
    }
)


def look(
    status: DeploymentStatus,
    now: datetime,
    ready: int = 0,
    waiting: dict[str, tuple[str, str]] | None = None,
    target: str = "iris-v1",
) -> Decision:
    observation = Observation(
        target=target, ready_replicas={"iris-v1": ready}, waiting=waiting or {}
    )
    return decide(SPEC, status, observation, now, 1)


def test_a_first_rollout_that_never_gets_ready_fails_at_its_progress_deadline() -> None:
    first = look(DeploymentStatus(), T0)
    assert first.status.phase == "Progressing"
    assert first.status.step_started_at == "2026-12-01T12:00:00Z"
    assert first.requeue_after is not None and first.requeue_after <= 5

    waiting = look(first.status, T0 + timedelta(seconds=119))
    assert waiting.status.phase == "Progressing"

    late = look(waiting.status, T0 + timedelta(seconds=120), waiting={"iris-v1": UNSCHEDULABLE})
    assert late.status.phase == "Degraded"
    degraded = condition(late.status.conditions, "Degraded")
    assert degraded is not None and degraded.reason == "ProgressDeadlineExceeded"
    assert degraded.message == (
        "0 of 2 pods of iris-v1 ready after 120s (progressDeadlineSeconds): "
        "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
    )
    progressing = condition(late.status.conditions, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
    assert [(e.reason, e.type) for e in late.events] == [("ProgressDeadlineExceeded", "Warning")]
    assert late.workloads["iris-v1"].replicas == 2, "nothing to roll back to: the pods stay"

    again = look(late.status, T0 + timedelta(seconds=180), waiting={"iris-v1": UNSCHEDULABLE})
    assert again.status.phase == "Degraded"
    assert again.events == [], "said once"


def test_pods_that_get_ready_after_the_deadline_make_it_healthy_and_stop_the_clock() -> None:
    first = look(DeploymentStatus(), T0)
    late = look(first.status, T0 + timedelta(seconds=300))
    assert late.status.phase == "Degraded"
    healthy = look(late.status, T0 + timedelta(seconds=310), ready=2)
    assert healthy.status.phase == "Healthy"
    assert healthy.status.step_started_at is None
    degraded = condition(healthy.status.conditions, "Degraded")
    assert degraded is not None and degraded.status == "False"


def test_a_stable_that_loses_its_pods_later_gets_a_fresh_deadline() -> None:
    healthy = look(look(DeploymentStatus(), T0).status, T0 + timedelta(seconds=10), ready=2)
    lost = look(healthy.status, T0 + timedelta(hours=5), ready=1)
    assert lost.status.phase == "Progressing"
    assert lost.status.step_started_at == "2026-12-01T17:00:00Z"


def test_the_pods_trouble_is_named_in_ready_and_progressing_while_they_wait() -> None:
    quota = ("FailedCreate", 'pods "iris-iris-v1-5d9f" is forbidden: exceeded quota: q')
    d = look(DeploymentStatus(), T0, waiting={"iris-v1": quota})
    ready = condition(d.status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "FailedCreate")
    assert ready.message == f"iris-v1 has no ready pod yet: FailedCreate: {quota[1]}"
    progressing = condition(d.status.conditions, "Progressing")
    assert progressing is not None and progressing.message.endswith(quota[1])


def test_a_canary_that_cannot_start_is_rolled_back_with_its_pods_reason() -> None:
    spec = DeploymentSpec.model_validate(
        {
            "modelVersion": "iris-v2",
            "replicas": 2,
            "strategy": {"canary": {"steps": [{"setWeight": 50}], "progressDeadlineSeconds": 60}},
        }
    )
    image = ("ImagePullFailed", 'ErrImagePull: image "nope:1" not found')
    stable = DeploymentStatus(stable_version="iris-v1", phase="Healthy")
    observation = Observation(
        target="iris-v2", ready_replicas={"iris-v1": 2}, waiting={"iris-v2": image}
    )
    started = decide(spec, stable, observation, T0, 1)
    progressing = condition(started.status.conditions, "Progressing")
    assert progressing is not None and progressing.message.endswith(image[1])
    rolled = decide(spec, started.status, observation, T0 + timedelta(seconds=60), 1)
    assert rolled.status.aborted_version == "iris-v2"
    degraded = condition(rolled.status.conditions, "Degraded")
    assert degraded is not None and f"ImagePullFailed: {image[1]}" in degraded.message
