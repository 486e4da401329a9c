"""TrainingJob reconciler: observe, let `core.training.decide` choose, act, write the status once.

It claims a version, runs the training Job, reads its result and registers it.

A claimed version is kept per TrainingJob in memory, then carried by the Job's annotation and the
status written after it is created (or refused), so a retry never claims another one. `suspend` is forwarded to the Job alone (batch/v1 semantics, so a queue such as Kueue
can admit TrainingJobs); the pod template never changes after creation. The Job is deleted by the
operator `ttlSecondsAfterFinished` after its result is in status, never before.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from mlkube.api.common import Body
from mlkube.api.crdgen import BY_KIND
from mlkube.api.modelversion import model_version_name
from mlkube.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from mlkube.builders.common import Owner
from mlkube.builders.modelversion import model_version_manifest
from mlkube.builders.training import build_job, build_trials_job, job_name, trials_job_name
from mlkube.controller.context import Context, Read, describe
from mlkube.controller.errors import ApiError, Forbidden, Invalid
from mlkube.controller.reconciler import ObjectReconciler
from mlkube.core.conditions import INVALID_SPEC
from mlkube.core.training import (
    ChampionArtifact,
    Decision,
    Observation,
    champion_name,
    checked_uris,
    decide,
    next_version,
    refused_spec,
    resolve_champion,
    retries_after_fix,
)

KIND = "TrainingJob"

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


class TrainingJobReconciler(ObjectReconciler[TrainingJobSpec, TrainingJobStatus]):
    kind = KIND
    spec_model = TrainingJobSpec
    status_model = TrainingJobStatus
    refused = staticmethod(refused_spec)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.claims = VersionClaims(ctx)

    def reconcile(self, r: Read_) -> float | None:
        """Returns seconds until the training wants another look (None: settled)."""
        observation = self._observe(r)
        decision = self._decide(r, observation)
        if decision.create_job or decision.create_trials:
            refused = self._create(r, decision)
            if refused is not None:  # Failed with the API server's words; the queue backs off
                error, message = refused
                self._write(
                    r, self._decide(r, replace(observation, refused=(INVALID_SPEC, message)))
                )
                raise error
        self._act(r, decision)
        self._write(r, decision)
        return decision.requeue_after

    def _decide(self, r: Read_, observation: Observation) -> Decision:
        return decide(
            r.spec, r.status, observation, self.ctx.clock(), r.generation, job_name(r.name)
        )

    def _observe(self, r: Read_) -> Observation:
        ctx, status = self.ctx, r.status
        job = ctx.caches.jobs.get(r.namespace, job_name(r.name))
        if status.phase in ("Succeeded", "Failed") and not retries_after_fix(status, r.generation):
            trials = (
                ctx.caches.jobs.get(r.namespace, trials_job_name(r.name)) if r.spec.search else None
            )  # only their clean-up is left
            return Observation(version=status.version or 0, job=job, trials_job=trials)
        if job is None and status.job_name == job_name(r.name):
            job = ctx.kube.get("batch/v1", "Job", r.namespace, job_name(r.name))
            if job is None:
                registered = model_version_name(r.spec.model, status.version or 0)
                return Observation(
                    version=status.version or 0,
                    job_lost=True,
                    registered=ctx.get("ModelVersion", r.namespace, registered) is not None,
                )
            ctx.caches.jobs.put(job)
        version = self._version(r, job)
        if job is None:
            trials = self._trials(r)
            champion = self._champion(r)
            known = champion if isinstance(champion, tuple) else None
            forbidden = ctx.forbidden(
                r.namespace,
                checked_uris(r.spec, known),
                data_fields={"spec.dataset.uri"},  # feedback files live in the store, never https
            )
            return Observation(
                version=version,
                champion=champion,
                forbidden=None if forbidden is None else forbidden.message,
                **trials,
            )
        # the decision forwards spec.suspend to the Job: no pods to read while it is suspended
        pods = (
            []
            if r.spec.suspend
            else ctx.kube.list_of("v1", "Pod", r.namespace, f"job-name={job_name(r.name)}")
        )
        events = [] if r.spec.suspend else ctx.events_about(job, pods)
        return Observation(version=version, job=job, pods=pods, events=events)

    def _trials(self, r: Read_) -> dict[str, Any]:
        """spec.search's trials Job, its pods and the Events about them, while no training Job
        exists (the pods' termination messages carry the trials' records)."""
        if r.spec.search is None:
            return {}
        ctx, name = self.ctx, trials_job_name(r.name)
        job = ctx.caches.jobs.get(r.namespace, name)
        if job is None or r.spec.suspend:
            return {"trials_job": job}
        pods = ctx.kube.list_of("v1", "Pod", r.namespace, f"job-name={name}")
        return {"trials_job": job, "trial_pods": pods, "trial_events": ctx.events_about(job, pods)}

    def _version(self, r: Read_, job: Body | None) -> int:
        """The version this TrainingJob trains: in status, on its Job, or claimed (once per
        TrainingJob: a retry after a failed create asks again and gets the same one)."""
        if r.status.version is not None:
            return r.status.version
        trials = (
            self.ctx.caches.jobs.get(r.namespace, trials_job_name(r.name))
            if r.spec.search is not None and job is None
            else None
        )
        for child in (job, trials):
            if child is not None:
                return int(child["metadata"]["annotations"]["mlkube.io/model-version"])
        return self.claims.claim(r.namespace, r.spec.model, r.name, r.obj["metadata"]["uid"])

    def _champion(self, r: Read_) -> ChampionArtifact | str | None:
        gate = r.spec.quality_gates.champion
        if gate is None:
            return None
        deployment = (
            self.ctx.get("Deployment", r.namespace, gate.deployment) if gate.deployment else None
        )
        name = champion_name(gate, deployment)
        version = self.ctx.get("ModelVersion", r.namespace, name) if name else None
        return resolve_champion(gate, deployment, version)

    def _create(self, r: Read_, decision: Decision) -> tuple[ApiError, str] | None:
        """Create the Job; the error and its message naming the Job when refused as written."""
        ctx = self.ctx
        ctx.ensure_artifact_storage(r.namespace)
        owner = Owner.from_body(KIND, r.obj)
        version = decision.status.version or 0
        manifest = (
            build_trials_job(owner, r.spec, version, ctx.config)
            if decision.create_trials
            else build_job(owner, r.spec, version, ctx.config, decision.champion)
        )
        try:
            ctx.create_job(manifest)
        except (Invalid, Forbidden) as e:
            return e, describe(e, manifest)
        return None

    def _act(self, r: Read_, decision: Decision) -> None:
        """Patch, register or delete as decided (the Job is created before)."""
        ctx, name = self.ctx, job_name(r.name)
        if decision.suspend is not None:
            patch = {"spec": {"suspend": decision.suspend}}
            ctx.caches.jobs.put(ctx.kube.patch("batch/v1", "Job", r.namespace, name, patch))
        if decision.suspend_trials is not None:
            patch = {"spec": {"suspend": decision.suspend_trials}}
            trials = trials_job_name(r.name)
            ctx.caches.jobs.put(ctx.kube.patch("batch/v1", "Job", r.namespace, trials, patch))
        if decision.register is not None:
            image = r.spec.image or ctx.config.runtime_image
            owner = Owner.from_body(KIND, r.obj)
            manifest = model_version_manifest(owner, r.spec, decision.register, image, ctx.clock())
            if ctx.kube.create_custom(BY_KIND["ModelVersion"], manifest):
                ctx.post_event(
                    r.obj, "Normal", "Registered", f"ModelVersion {manifest['metadata']['name']}"
                )
        if decision.delete_job:
            ctx.kube.delete("batch/v1", "Job", r.namespace, name)
            if r.spec.search is not None:
                ctx.kube.delete("batch/v1", "Job", r.namespace, trials_job_name(r.name))

    def _write(self, r: Read_, decision: Decision) -> None:
        for event in decision.events:
            self.ctx.post_event(r.obj, event.type, event.reason, event.message)
        if decision.status != r.status:
            self.ctx.write_status(KIND, r.obj, decision.status)
