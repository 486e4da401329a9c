"""Which ModelVersion a Deployment serves: the one its spec names, or the newest approved one.

Pure: ModelVersion bodies in, (name, problem) out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from mlkube.api.common import Body
from mlkube.core.waiting import Problem

"""(reason, message) for a condition."""


def servable(mv: Body, require_approval: bool) -> tuple[str | None, Problem | None]:
    """(name, None) when a ModelVersion can be served, else (None, (reason, message))."""
    name = mv["metadata"]["name"]
    conditions = (mv.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        reason = (ready or {}).get("reason", "Verifying")
        message = (ready or {}).get("message") or "its artifact is being verified"
        return None, (
            "ModelVersionNotReady",
            f"ModelVersion {name} is not ready ({reason}): {message}",
        )
    approval = mv["spec"].get("approval") or {}
    if require_approval and not approval.get("approved"):
        return None, (
            "NotApproved",
            f"ModelVersion {name} is not approved; run `mlkube approve {name}`",
        )
    return name, None


class TargetSpec(Protocol):
    """A spec naming a ModelVersion, or following a model's newest approved one (a Deployment,
    a BatchPrediction)."""

    @property
    def model_version(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def require_approval(self) -> bool: ...


def resolve_target(
    spec: TargetSpec, versions: Mapping[str, Body]
) -> tuple[str | None, Problem | None]:
    """The servable ModelVersion the spec asks for, or why there is none."""
    if spec.model_version:
        mv = versions.get(spec.model_version)
        if mv is None:
            return None, (
                "ModelVersionNotFound",
                f"ModelVersion {spec.model_version} does not exist",
            )
        return servable(mv, spec.require_approval)
    candidates = sorted(
        (mv for mv in versions.values() if mv["spec"].get("model") == spec.model),
        key=lambda mv: int(mv["spec"]["version"]),
        reverse=True,
    )
    for mv in candidates:
        target, _ = servable(mv, True)
        if target:
            return target, None
    return None, ("NoApprovedVersion", f"model {spec.model} has no approved, verified ModelVersion")
