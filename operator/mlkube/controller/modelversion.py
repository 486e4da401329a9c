"""ModelVersion reconciler: mirror the approval, verify the artifact's digest with a short Job.

When a version's readiness or approval changes, the Deployments that could serve it are put in the
work queue at once rather than noticing on their next poll.

Where the version serves and served (`servingIn`, `aliases`, `history`) is derived here from the
Deployments' status, so this reconciler stays the one writer of a ModelVersion's status: two
Deployments serving one version never race for it, and the Deployment reconciler only puts the
versions whose record it changed in the queue.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from mlkube.api.common import Body, ConditionStatus
from mlkube.api.deployment import DeploymentStatus
from mlkube.api.modelversion import ModelVersionSpec, ModelVersionStatus
from mlkube.builders.common import Owner
from mlkube.builders.training import build_verify_job, verify_job_name
from mlkube.controller import metrics
from mlkube.controller.context import Read, ready_reason
from mlkube.controller.reconciler import ObjectReconciler
from mlkube.core.conditions import condition, set_condition
from mlkube.core.history import version_record
from mlkube.core.training import termination_result
from mlkube.core.waiting import why_not_running
from mlkube.tenancy import FORBIDDEN_URI

KIND = "ModelVersion"
VERIFY_POLL_SECONDS = 5.0

Read_ = Read[ModelVersionSpec, ModelVersionStatus]


class ModelVersionReconciler(ObjectReconciler[ModelVersionSpec, ModelVersionStatus]):
    kind = KIND
    spec_model = ModelVersionSpec
    status_model = ModelVersionStatus

    def reconcile(self, r: Read_) -> float | None:
        """Returns seconds until verification wants another look (None: settled)."""
        ctx, spec, status = self.ctx, r.spec, r.status
        now = ctx.clock()
        new = status.model_copy(deep=True)
        new.observed_generation = r.generation
        approval = spec.approval
        new.approved = bool(approval and approval.approved)
        approved_reason, approved_message = (
            ("Approved", f"approved by {approval.by}")
            if approval and approval.approved
            else ("Rejected", f"rejected by {approval.by}")
            if approval
            else ("AwaitingApproval", f"run `mlkube approve {r.name}`")
        )
        new.conditions = set_condition(
            new.conditions, "Approved", "True" if new.approved else "False",
            approved_reason, approved_message, r.generation, now,
        )  # fmt: skip
        forbidden = ctx.forbidden(
            r.namespace,
            {
                "spec.artifact.uri": spec.artifact.uri,
                "spec.referenceSampleUri": spec.reference_sample_uri,
            },
        )
        if forbidden is not None:
            new.phase, new.verified_sha256 = "Invalid", None
            new.conditions = set_condition(
                new.conditions, "Ready", "False", FORBIDDEN_URI, forbidden.message,
                r.generation, now,
            )  # fmt: skip
        elif new.verified_sha256 != spec.artifact.sha256 and (
            new.phase != "Invalid" or ready_reason(new.conditions) == FORBIDDEN_URI
        ):
            new = self._verify(r, new, now)
        new = self._record(r, new, now)
        if new != status:
            was, ready = condition(status.conditions, "Ready"), condition(new.conditions, "Ready")
            if ready is not None and (was is None or was.reason != ready.reason):
                # each step of verification, a stuck verify pod included, in `kubectl describe`
                ctx.post_event(
                    r.obj, "Warning" if ready.status == "False" else "Normal",
                    ready.reason, ready.message,
                )  # fmt: skip
            ctx.write_status(KIND, r.obj, new)
            if (new.phase, new.approved) != (status.phase, status.approved):
                self._wake_deployments(r)
        self._count_versions(r.namespace)
        return VERIFY_POLL_SECONDS if new.phase == "Pending" else None

    def _verify(self, r: Read_, status: ModelVersionStatus, now: datetime) -> ModelVersionStatus:
        """Check the artifact with a verify Job (the operator does not mount the store)."""
        ctx, spec = self.ctx, r.spec
        name = verify_job_name(r.name)
        job = ctx.caches.jobs.get(r.namespace, name)
        digest = (job or {}).get("metadata", {}).get("annotations", {}).get("mlkube.io/sha256")
        if job is None or digest != spec.artifact.sha256:
            if job is not None:
                ctx.kube.delete("batch/v1", "Job", r.namespace, name)
            ctx.ensure_artifact_storage(r.namespace)
            owner = Owner.from_body(KIND, r.obj)
            ctx.kube.create(
                build_verify_job(
                    owner, spec.artifact.uri, spec.artifact.sha256, ctx.config, spec.artifact.files
                )
            )
            job = None
        finished = job is not None and (
            (job.get("status") or {}).get("succeeded") or (job.get("status") or {}).get("failed")
        )
        pods = ctx.kube.list_of("v1", "Pod", r.namespace, f"job-name={name}") if job else []
        result = termination_result(pods) if finished else None
        problem = (
            why_not_running(job, pods, ctx.events_about(job, pods))
            if job is not None and result is None
            else None
        )
        s = status.model_copy(deep=True)
        ready: ConditionStatus
        if problem is not None:
            # still Pending: the kubelet retries a pod that cannot start, and a verify Job that
            # ended without a result (its deadline) is made again once its TTL removed it
            s.phase = "Pending"
            cannot = "could not run" if finished else "cannot start"
            reason, message, ready = (
                problem[0],
                f"the verify pod {cannot}: {problem[1]}".strip(),
                "False",
            )
        elif result is None:
            s.phase = "Pending"
            reason, message, ready = "Verifying", "checking the artifact's sha256", "Unknown"
        elif result.get("status") == "Verified":
            s.phase, s.verified_sha256 = "Ready", spec.artifact.sha256
            reason, message, ready = (
                "ArtifactVerified",
                f"{spec.artifact.uri} matches its sha256",
                "True",
            )
        else:
            s.phase = "Invalid"
            reason = str(result.get("reason", "VerifyFailed"))
            message, ready = str(result.get("message", "")), "False"
        s.conditions = set_condition(
            s.conditions, "Ready", ready, reason, message, r.generation, now
        )
        return s

    def _record(self, r: Read_, status: ModelVersionStatus, now: datetime) -> ModelVersionStatus:
        """Where this version serves and served, from the cached Deployments' status; one this
        status names that the cache does not hold (yet, after a restart) is read from the API
        server, so a Deployment is taken off the record only once it is gone."""
        cached = self.ctx.caches.objects["Deployment"].list(r.namespace)
        bodies = {d["metadata"]["name"]: d for d in cached}
        named = {s.deployment for s in status.serving_in or []}
        named |= {e.deployment for e in status.history or [] if e.to is None}
        for name in sorted(named - bodies.keys()):
            body = self.ctx.get("Deployment", r.namespace, name)
            if body is not None:
                bodies[name] = body
        deployments = {
            name: DeploymentStatus.model_validate(body.get("status") or {})
            for name, body in bodies.items()
            if name in named or _mentions(body, r.name)
        }
        record = version_record(r.name, deployments, status.history or [], now)
        return status.model_copy(
            update={  # unset rather than empty: a version that never served says nothing
                "serving_in": record.serving_in or None,
                "role": record.role,
                "aliases": record.aliases or None,
                "history": record.history or None,
            }
        )

    def _wake_deployments(self, r: Read_) -> None:
        for deployment in self.ctx.caches.objects["Deployment"].list(r.namespace):
            spec = deployment.get("spec") or {}
            if spec.get("modelVersion") == r.name or spec.get("model") == r.spec.model:
                self.ctx.enqueue(("Deployment", r.namespace, deployment["metadata"]["name"]), 0)

    def gone(self, namespace: str, name: str) -> None:
        """A version gone (or unreadable): the Deployments naming it, or serving it, look again
        now, so none keeps it as a rollout target."""
        for deployment in self.ctx.caches.objects["Deployment"].list(namespace):
            status = deployment.get("status") or {}
            named = (deployment.get("spec") or {}).get("modelVersion") == name
            if named or name in (status.get("stableVersion"), status.get("canaryVersion")):
                self.ctx.enqueue(("Deployment", namespace, deployment["metadata"]["name"]), 0)

    def _count_versions(self, namespace: str) -> None:
        counts = Counter(
            str((mv.get("status") or {}).get("phase") or "Pending")
            for mv in self.ctx.caches.objects[KIND].list(namespace)
        )
        for phase in ("Pending", "Ready", "Invalid"):
            metrics.MODEL_VERSIONS.labels(namespace, phase).set(counts.get(phase, 0))


def _mentions(deployment: Body, version: str) -> bool:
    """Whether a Deployment's status names `version` (a cheap look before parsing it)."""
    status = deployment.get("status") or {}
    roles = ("stableVersion", "canaryVersion", "previousStableVersion")
    return any(status.get(role) == version for role in roles) or any(
        entry.get("version") == version for entry in status.get("history") or []
    )
