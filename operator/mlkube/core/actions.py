"""CLI actions on a Deployment travel as one annotation the operator carries out once.

The value is `<verb>@<timestamp>`, or `<verb>@<timestamp>@<user>` when the CLI knows who asks
(the user the API server names in a SelfSubjectReview; the Deployment's history records it); the
operator records the whole value in `status.handledAction`, so the same annotation is never acted
on twice and the spec is never written (GitOps tools own it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mlkube.core.canary import ACTIONS, Action
from mlkube.core.conditions import timestamp

ACTION_ANNOTATION = "mlkube.io/action"
GITOPS_MARKERS = {
    "argocd.argoproj.io/tracking-id": "Argo CD",
    "argocd.argoproj.io/instance": "Argo CD",
    "kustomize.toolkit.fluxcd.io/name": "Flux",
    "helm.toolkit.fluxcd.io/name": "Flux",
}


def action_value(verb: Action, now: datetime, requester: str | None = None) -> str:
    value = f"{verb}@{timestamp(now)}"
    return f"{value}@{requester}" if requester else value


def requester(value: str) -> str | None:
    """Who asked for the action `value`, as the client recorded it (None: it names nobody)."""
    parts = value.split("@", 2)
    return (parts[2] or None) if len(parts) == 3 else None


def pending_action(annotations: dict[str, str], handled: str | None) -> tuple[Action, str] | None:
    """The (verb, annotation value) still to carry out, if any; unknown verbs are ignored."""
    value = annotations.get(ACTION_ANNOTATION)
    if not value or value == handled:
        return None
    verb = value.split("@", 1)[0]
    if verb not in ACTIONS:
        return None
    return verb, value


def managed_by_gitops(metadata: dict[str, Any]) -> str | None:
    """The GitOps tool that owns this object's spec, judged by the marks Argo CD and Flux leave."""
    marks = {**(metadata.get("labels") or {}), **(metadata.get("annotations") or {})}
    return next((tool for key, tool in GITOPS_MARKERS.items() if key in marks), None)
