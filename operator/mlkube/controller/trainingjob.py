"""TrainingJob reconciler: claim a version, run the training Job, read its result, register it.

A claimed version is kept per TrainingJob in memory, then carried by the Job's annotation and the
status written after it is created (or refused), so a retry never claims another one. `suspend` is forwarded to the Job alone (batch/v1 semantics, so a queue such as Kueue
can admit TrainingJobs); the pod template never changes after creation. The Job is deleted by the
operator `ttlSecondsAfterFinished` after its result is in status, never before.
"""

from __future__ import annotations

import threading
from typing import Any

from mlkube.api.crdgen import BY_KIND
from mlkube.api.modelversion import model_version_name
from mlkube.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from mlkube.builders.common import Owner
from mlkube.builders.training import build_job, job_name
from mlkube.controller import metrics
from mlkube.controller.cache import Body
from mlkube.controller.context import INVALID_SPEC, Context, Read, describe
from mlkube.controller.errors import Forbidden, Invalid
from mlkube.core.conditions import parse_timestamp, set_condition
from mlkube.core.training import (
    Outcome,
    model_version_manifest,
    next_version,
    training_outcome,
    training_status,
)
from mlkube.tenancy import FORBIDDEN_URI

KIND = "TrainingJob"
POLL_SECONDS = 10.0
"""While a Job runs: its events say when it ends; polling catches what no Job event tells, a pod
that cannot start or pods the API server refused (`core.waiting`)."""
JOB_LOST = "JobLost"

Read_ = Read[TrainingJobSpec, TrainingJobStatus]


class VersionClaims:
    """Versions per (namespace, model), handed out once each, even to TrainingJobs created at the
    same instant. The first claim for a model reads what exists (2 API reads); later ones are O(1)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], int] = {}
        self._by_claimant: dict[str, int] = {}
        """Claims by TrainingJob uid, until the Job's annotation or the status carries them."""

    def _existing(self, namespace: str, model: str, claimant: str) -> list[int]:
        kube, caches = self._ctx.kube, self._ctx.caches.objects
        taken: list[int] = []
        for mv in kube.list_objects(BY_KIND["ModelVersion"], namespace):
            caches["ModelVersion"].put(mv)
            if mv["spec"].get("model") == model:
                taken.append(int(mv["spec"]["version"]))
        for tj in kube.list_objects(BY_KIND[KIND], namespace):
            caches[KIND].put(tj)
            version = (tj.get("status") or {}).get("version")
            if tj["spec"].get("model") == model and version and tj["metadata"]["name"] != claimant:
                taken.append(int(version))
        return taken

    def claim(self, namespace: str, model: str, claimant: str, uid: str) -> int:
        key = (namespace, model)
        with self._lock:
            if uid in self._by_claimant:
                return self._by_claimant[uid]
            if key not in self._last:
                self._last[key] = next_version(self._existing(namespace, model, claimant)) - 1
            version = self._last[key] + 1
            versions = self._ctx.caches.objects["ModelVersion"]
            while versions.get(namespace, model_version_name(model, version)) is not None:
                version += 1  # registered by hand since the first claim
            self._last[key] = version
            self._by_claimant[uid] = version
            return version


class TrainingJobReconciler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.claims = VersionClaims(ctx)

    def __call__(self, namespace: str, name: str) -> float | None:
        """Returns seconds until the training wants another look (None: settled)."""
        with metrics.reconciling(KIND):
            read = self.ctx.read(KIND, namespace, name, TrainingJobSpec, TrainingJobStatus)
            if read is None:
                return None
            return self._reconcile(read)

    def _reconcile(self, r: Read_) -> float | None:
        ctx, status = self.ctx, r.status
        job = ctx.caches.jobs.get(r.namespace, job_name(r.name))
        if status.phase in ("Succeeded", "Failed") and not _retry_after_fix(status, r.generation):
            return self._clean_up(r, job)
        if job is None and status.job_name:
            job = ctx.kube.get("batch/v1", "Job", r.namespace, job_name(r.name))
            if job is None:
                self._lost(r)
                return None
            ctx.caches.jobs.put(job)
        version = self._version(r, job)
        if job is None:
            job = self._create(r, version)
            if job is None:
                return None
        elif bool((job.get("spec") or {}).get("suspend")) != r.spec.suspend:
            patched = ctx.kube.patch(
                "batch/v1",
                "Job",
                r.namespace,
                job_name(r.name),
                {"spec": {"suspend": r.spec.suspend}},
            )
            job = ctx.caches.jobs.put(patched)
        suspended = bool((job.get("spec") or {}).get("suspend"))
        pods = (
            []
            if suspended
            else ctx.kube.list_of("v1", "Pod", r.namespace, f"job-name={job_name(r.name)}")
        )
        events = [] if suspended else ctx.events_about(job, pods)
        outcome = training_outcome(job, pods, events)
        new = training_status(r.status, outcome, r.generation, ctx.clock())
        new = new.model_copy(update={"version": version, "job_name": job_name(r.name)})
        if outcome.phase == "Succeeded":
            new = self._register(r, outcome.result, new)
        if new.phase != r.status.phase:
            type_ = "Warning" if new.phase == "Failed" else "Normal"
            ctx.post_event(r.obj, type_, outcome.reason, outcome.message or str(new.phase))
        if new != r.status:
            ctx.write_status(KIND, r.obj, new)
        if new.phase in ("Pending", "Running"):
            return POLL_SECONDS
        return self._clean_up(r, job) if new.phase in ("Succeeded", "Failed") else None

    def _version(self, r: Read_, job: Body | None) -> int:
        """The version this TrainingJob trains: in status, on its Job, or claimed (once per
        TrainingJob: a retry after a failed create asks again and gets the same one)."""
        if r.status.version is not None:
            return r.status.version
        if job is not None:
            return int(job["metadata"]["annotations"]["mlkube.io/model-version"])
        return self.claims.claim(r.namespace, r.spec.model, r.name, r.obj["metadata"]["uid"])

    def _create(self, r: Read_, version: int) -> Body | None:
        """Create the Job; None when the TrainingJob cannot train (status says why)."""
        ctx = self.ctx
        champion = self._champion(r)
        if isinstance(champion, str):
            self._fail(r, "ChampionNotFound", champion, version)
            return None
        log = r.spec.dataset.inference_log
        feedback = {
            f"spec.dataset.inferenceLog.feedbackUris[{i}]": uri
            for i, uri in enumerate(log.feedback_uris if log else [])
        }
        forbidden = ctx.forbidden(
            r.namespace,
            {
                "spec.dataset.uri": r.spec.dataset.uri,
                "spec.qualityGates.champion.modelVersion": champion[0] if champion else None,
                **feedback,
            },
            data_fields={"spec.dataset.uri"},  # feedback files live in the store, never https
        )
        if forbidden is not None:
            self._fail(r, FORBIDDEN_URI, forbidden.message, version)
            return None
        ctx.ensure_artifact_storage(r.namespace)
        owner = Owner.from_body(KIND, r.obj)
        manifest = build_job(owner, r.spec, version, ctx.config, champion)
        try:
            ctx.kube.create(manifest)
        except (Invalid, Forbidden) as e:
            self._fail(r, INVALID_SPEC, describe(e, manifest), version)
            raise
        ctx.post_event(r.obj, "Normal", "JobCreated", f"training {r.spec.model} v{version}")
        # the watch brings the full object; until then, what was sent is what exists
        return ctx.caches.jobs.get(r.namespace, job_name(r.name)) or ctx.caches.jobs.put(
            {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": "0"}}
        )

    def _champion(self, r: Read_) -> tuple[str, str] | str | None:
        gate = r.spec.quality_gates.champion
        if gate is None:
            return None
        name = gate.model_version
        if gate.deployment is not None:
            deployment = self.ctx.get("Deployment", r.namespace, gate.deployment)
            name = ((deployment or {}).get("status") or {}).get("stableVersion")
            if not name:
                return f"qualityGates.champion: Deployment {gate.deployment} serves no version"
        champion = self.ctx.get("ModelVersion", r.namespace, name) if name else None
        if champion is None:
            return f"qualityGates.champion: ModelVersion {name} does not exist"
        artifact = champion["spec"]["artifact"]
        return str(artifact["uri"]), str(artifact["sha256"])

    def _fail(self, r: Read_, reason: str, message: str, version: int | None) -> None:
        new = training_status(
            r.status, Outcome("Failed", reason, message), r.generation, self.ctx.clock()
        )
        new = new.model_copy(update={"version": version})
        if (r.status.phase, _failed_reason(r.status)) != ("Failed", reason):
            self.ctx.post_event(r.obj, "Warning", reason, message)
        self.ctx.write_status(KIND, r.obj, new)

    def _lost(self, r: Read_) -> None:
        """The Job is gone before its result was read (deleted, or lost while the operator was
        down): never trained again under a new version. A registered version means it finished."""
        registered = model_version_name(r.spec.model, r.status.version or 0)
        if self.ctx.get("ModelVersion", r.namespace, registered) is not None:
            outcome = Outcome("Succeeded", "Succeeded", "trained and registered")
            new = training_status(r.status, outcome, r.generation, self.ctx.clock())
            self.ctx.write_status(KIND, r.obj, new.model_copy(update={"model_version": registered}))
            return
        self._fail(
            r,
            JOB_LOST,
            f"Job {job_name(r.name)} disappeared before its result was read; create a new "
            f"TrainingJob to train again (version {r.status.version} stays unused)",
            r.status.version,
        )

    def _clean_up(self, r: Read_, job: Body | None) -> float | None:
        """Delete the finished Job ttlSecondsAfterFinished after the result was recorded."""
        ttl = r.spec.ttl_seconds_after_finished
        done = r.status.completion_time
        if ttl is None or job is None or done is None:
            return None
        left = ttl - (self.ctx.clock() - parse_timestamp(done)).total_seconds()
        if left > 0:
            return left
        self.ctx.kube.delete("batch/v1", "Job", r.namespace, job_name(r.name))
        return None

    def _register(
        self, r: Read_, result: dict[str, Any], status: TrainingJobStatus
    ) -> TrainingJobStatus:
        ctx = self.ctx
        image = r.spec.image or ctx.config.runtime_image
        if not result.get("columns"):
            failed = status.model_copy(update={"phase": "Failed"})
            failed.conditions = set_condition(
                failed.conditions,
                "Failed",
                "True",
                "SchemaTooLarge",
                "the input schema did not fit the termination message; register the version by hand",
                status.observed_generation,
                ctx.clock(),
            )
            return failed
        owner = Owner.from_body(KIND, r.obj)
        manifest = model_version_manifest(owner, r.spec, result, image, ctx.clock())
        if ctx.kube.create_custom(BY_KIND["ModelVersion"], manifest):
            ctx.post_event(
                r.obj, "Normal", "Registered", f"ModelVersion {manifest['metadata']['name']}"
            )
        return status.model_copy(update={"model_version": manifest["metadata"]["name"]})


def _failed_reason(status: TrainingJobStatus) -> str | None:
    return next(
        (c.reason for c in status.conditions if c.type == "Failed" and c.status == "True"), None
    )


def _retry_after_fix(status: TrainingJobStatus, generation: int | None) -> bool:
    """A TrainingJob refused as written trains once its spec changed; any other end is final."""
    return (
        status.phase == "Failed"
        and _failed_reason(status) in (INVALID_SPEC, FORBIDDEN_URI, "ChampionNotFound")
        and generation != status.observed_generation
    )
