"""metav1.Condition bookkeeping: upsert by type, keep lastTransitionTime while status holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from mlkube.api.common import Condition, ConditionStatus

INVALID_SPEC = "InvalidSpec"
"""Reason: the spec cannot work as written (the operator's or the API server's refusal)."""


@dataclass(frozen=True)
class Event:
    """A core/v1 Event a decision asks the controller to post on its object."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """A new list with the condition of `type_` replaced or added."""
    previous = next((c for c in conditions if c.type == type_), None)
    changed = previous is None or previous.status != status
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=timestamp(now)
        if changed or previous is None
        else previous.last_transition_time,
        observed_generation=generation,
    )
    return (
        [updated if c.type == type_ else c for c in conditions]
        if previous
        else [*conditions, updated]
    )


def condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def condition_status(conditions: list[Condition], type_: str) -> ConditionStatus | None:
    found = condition(conditions, type_)
    return None if found is None else found.status


def outcome_conditions(
    conditions: list[Condition],
    phase: str,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Running, Succeeded and Failed of a run-to-completion object (batch/v1 Job's words): the
    phase's reason and message on the condition that holds, AsExpected on the others; Succeeded
    stays Unknown, with the reason, until the run ends."""
    running: ConditionStatus = "True" if phase == "Running" else "False"
    succeeded: ConditionStatus = (
        "True" if phase == "Succeeded" else "False" if phase == "Failed" else "Unknown"
    )
    failed: ConditionStatus = "True" if phase == "Failed" else "False"
    for type_, value in (("Running", running), ("Succeeded", succeeded), ("Failed", failed)):
        why = reason if value == "True" or type_ == "Succeeded" else "AsExpected"
        text = message if why == reason else ""
        conditions = set_condition(conditions, type_, value, why, text, generation, now)
    return conditions
