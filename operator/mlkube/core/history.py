"""The registry's record: which version served where, in which role, since when, and why.

A Deployment's `status.history` follows each canary decision (`record`): the span of a version
that left a role is closed, one that took a role is opened, with the reason read off the two
statuses and who asked (the action's requester, or the operator). Status lives in etcd, so the
record survives operator restarts, and a decision that changes nothing changes no entry.

A ModelVersion's `servingIn`, `aliases` and `history` are derived from the Deployments' statuses
(`version_record`) by the ModelVersion reconciler, the one writer of a ModelVersion's status: two
Deployments serving one version never race to write it. Aliases follow MLflow's (2.9+) names:
`champion` is a Deployment's stable version, `challenger` its canary; one per Deployment, since a
model may be served by several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from mlkube.api.deployment import HISTORY_LIMIT, DeploymentStatus, HistoryEntry
from mlkube.api.modelversion import (
    SERVING_IN_LIMIT,
    SERVING_ROLES,
    Alias,
    AliasName,
    ModelVersionStatus,
    ServingIn,
    ServingRecord,
    ServingRole,
)
from mlkube.core.conditions import condition, timestamp

OPERATOR = "operator"
"""`by` for what the operator did on its own (a spec change, an analysis, a deadline)."""
UNKNOWN = "unknown"
"""`by` for an action whose annotation names nobody (kubectl annotate, an Argo CD action)."""
ALIASES: dict[ServingRole, AliasName] = {
    "Stable": "champion",
    "Canary": "challenger",
}


def _roles(status: DeploymentStatus) -> dict[str, str | None]:
    return {"Stable": status.stable_version, "Canary": status.canary_version}


def _start_reason(role: str, version: str, before: DeploymentStatus) -> str:
    if _roles(before)[role] == version:
        return "Observed"  # serving before the record began (a Deployment older than it)
    if role == "Canary":
        return "Retried" if before.aborted_version == version else "CanaryStarted"
    if before.canary_version == version:
        return "Promoted"
    if before.previous_stable_version == version:
        return "RolledBack"
    return "Initial"


def _end_reason(entry: HistoryEntry, before: DeploymentStatus, after: DeploymentStatus) -> str:
    if entry.role == "Stable":
        if (
            after.stable_version is not None
            and after.stable_version == before.previous_stable_version
        ):
            return "RolledBack"
        return "Replaced"
    if after.stable_version == entry.version:
        return "Promoted"
    if after.canary_version is not None:
        return "Replaced"
    degraded = condition(after.conditions, "Degraded")
    if degraded is not None and degraded.status == "True":
        return degraded.reason  # Aborted, AnalysisFailed, RolledBack, ModelVersionNotFound...
    return "Abandoned"


def record(
    before: DeploymentStatus, after: DeploymentStatus, now: datetime, by: str
) -> list[HistoryEntry]:
    """`after`'s history, oldest first: each open span whose version no longer holds its role
    closed at `now`, each version newly holding a role opened, bounded by `bounded`.

    `before` is the status the decision started from, `after` the one it made (its history still
    `before`'s); `by` is the action's requester, or OPERATOR."""
    at = timestamp(now)
    holding = _roles(after)
    history = [entry.model_copy() for entry in after.history or []]
    for entry in history:
        if entry.to is None and holding[entry.role] != entry.version:
            entry.to, entry.ended_by = at, by
            entry.end_reason = _end_reason(entry, before, after)
    open_spans = {(e.role, e.version) for e in history if e.to is None}
    for role, version in holding.items():
        if version is not None and (role, version) not in open_spans:
            history.append(
                HistoryEntry.model_validate(
                    {
                        "version": version,
                        "role": role,
                        "from": at,
                        "reason": _start_reason(role, version, before),
                        "by": by,
                    }
                )
            )
    return bounded(history)


Entry = TypeVar("Entry", bound=HistoryEntry)


def bounded(history: list[Entry], limit: int = HISTORY_LIMIT) -> list[Entry]:
    """At most `limit` entries (the schema's maxItems: a longer list gets the whole status write
    refused), the oldest ended ones dropped first: an open span goes, oldest first, only when the
    open ones alone exceed `limit` (a version stable in more Deployments than that, which its
    servingIn still names), never for an ended one (a stable serving through fifty aborted
    canaries keeps its span)."""
    excess = len(history) - limit
    if excess <= 0:
        return history
    ended = [i for i, entry in enumerate(history) if entry.to is not None]
    still_open = [i for i, entry in enumerate(history) if entry.to is None]
    dropped = set([*ended, *still_open][:excess])
    return [entry for i, entry in enumerate(history) if i not in dropped]


def serving_versions(status: DeploymentStatus) -> set[str]:
    """The versions a Deployment's status has in a role (stable, canary, warm previous)."""
    roles = (status.stable_version, status.canary_version, status.previous_stable_version)
    return {version for version in roles if version is not None}


def _serving_in(version: str, deployment: str, status: DeploymentStatus) -> list[ServingIn]:
    found = []
    holding = {**_roles(status), "Previous": status.previous_stable_version}
    for role in SERVING_ROLES:
        if holding[role] != version:
            continue
        spans = [e for e in status.history or [] if e.version == version]
        if role == "Previous":  # warm since its stable span ended
            since = next((e.to for e in reversed(spans) if e.role == "Stable" and e.to), None)
        else:
            since = next((e.from_ for e in reversed(spans) if e.role == role and not e.to), None)
        found.append(ServingIn(deployment=deployment, role=role, since=since))
    return found


def _records(version: str, deployment: str, status: DeploymentStatus) -> list[ServingRecord]:
    return [
        ServingRecord.model_validate({**entry.model_dump(), "deployment": deployment})
        for entry in status.history or []
        if entry.version == version
    ]


@dataclass(frozen=True)
class VersionRecord:
    """What a ModelVersion's status says about where it serves and served."""

    serving_in: list[ServingIn]
    role: str | None
    aliases: list[Alias]
    history: list[ServingRecord]


def version_record(
    version: str,
    deployments: Mapping[str, DeploymentStatus],
    kept: Iterable[ServingRecord],
    now: datetime,
) -> VersionRecord:
    """The record of ModelVersion `version` from the statuses of the namespace's Deployments
    (by name; those that never served it may be left out) and the history it `kept` so far.

    Spans the Deployments still hold are taken from them as they are now; spans they no longer
    hold stay as kept (a Deployment's own history dropped them, or it was deleted), and one still
    open is closed at `now`: DeploymentDeleted when its Deployment is gone, Unrecorded when the
    Deployment's status no longer has it."""
    names = sorted(deployments)
    serving_in = [s for name in names for s in _serving_in(version, name, deployments[name])]
    serving_in = serving_in[:SERVING_IN_LIMIT]
    held = [r for name in names for r in _records(version, name, deployments[name])]
    keys = {(r.deployment, r.role, r.from_) for r in held}
    history = []
    for entry in kept:
        if (entry.deployment, entry.role, entry.from_) in keys:
            continue
        if entry.to is None:
            reason = "Unrecorded" if entry.deployment in deployments else "DeploymentDeleted"
            update = {"to": timestamp(now), "end_reason": reason, "ended_by": OPERATOR}
            history.append(entry.model_copy(update=update))
        else:
            history.append(entry)
    history = sorted([*history, *held], key=lambda r: r.from_)
    roles = [role for role in SERVING_ROLES if any(s.role == role for s in serving_in)]
    return VersionRecord(
        serving_in=serving_in,
        role=",".join(roles) or None,
        aliases=[
            Alias(name=ALIASES[s.role], deployment=s.deployment)
            for s in serving_in
            if s.role in ALIASES
        ],
        history=bounded(history),
    )


def stale_versions(
    deployment: str,
    before: DeploymentStatus,
    after: DeploymentStatus,
    recorded: Callable[[str], ModelVersionStatus | None],
) -> list[str]:
    """Versions whose ModelVersion status (`recorded(name)`) does not yet show what `after`
    says of them: its roles now and the spans this decision changed. After a restart the first
    decision finds what the ModelVersions missed.

    A version `recorded` does not know (None: not in the cache, just after a restart, or gone)
    is stale only when this decision changed its spans, so a missing one is asked about once per
    change, never at every look."""
    changed = [e for e in after.history or [] if e not in (before.history or [])]
    touched = {e.version for e in changed}
    stale = []
    # a version that lost its role (a warm previous scaled down) must lose it on its record too
    for version in sorted(serving_versions(before) | serving_versions(after) | touched):
        mv = recorded(version)
        if mv is None:
            if version in touched:
                stale.append(version)
            continue
        shown = [s for s in mv.serving_in or [] if s.deployment == deployment]
        spans = _records(version, deployment, DeploymentStatus(history=changed))
        if shown != _serving_in(version, deployment, after) or any(
            span not in (mv.history or []) for span in spans
        ):
            stale.append(version)
    return stale
