"""BatchPrediction reconciler: observe the run's Jobs, let `core.batch.decide` choose, write it.

Each step's Job has a deterministic name and the run's state lives in status (the phase, the
pinned ModelVersion, the shard counts), so an operator restarted mid-run finds its Jobs and goes
on; a create that races another is a 409, which is success. Pods are read only for what the Jobs'
status cannot say: a finished plan or manifest step's result, a newly failed shard's reason, and
why a step's pod cannot start. The Jobs are owned by the BatchPrediction; its output in the store
is not, so deleting the BatchPrediction never deletes its output.
"""

from __future__ import annotations

from typing import Any

from mlkube.api.batchprediction import BatchPredictionSpec, BatchPredictionStatus
from mlkube.api.common import Body
from mlkube.builders.batch import (
    WORKER,
    Scoring,
    Step,
    build_manifest_job,
    build_plan_job,
    build_shards_job,
    job_name,
)
from mlkube.builders.common import Owner
from mlkube.controller.context import Read, describe
from mlkube.controller.errors import Forbidden, Invalid
from mlkube.controller.reconciler import ObjectReconciler
from mlkube.core.batch import (
    SHARD_LABEL,
    Observation,
    Target,
    decide,
    describe_failures,
    failed,
    job_finished,
    parse_indexes,
    remaining_seconds,
    unread_failures,
)
from mlkube.core.conditions import INVALID_SPEC, Event
from mlkube.core.serving import resolve_target
from mlkube.core.training import termination_result
from mlkube.core.waiting import Problem, blocked

KIND = "BatchPrediction"

Read_ = Read[BatchPredictionSpec, BatchPredictionStatus]

PHASE_STEP: dict[str, Step] = {"Planning": "plan", "Running": "shards", "Finalizing": "manifest"}


class BatchPredictionReconciler(ObjectReconciler[BatchPredictionSpec, BatchPredictionStatus]):
    kind = KIND
    spec_model = BatchPredictionSpec
    status_model = BatchPredictionStatus

    def reconcile(self, r: Read_) -> float | None:
        """Returns seconds until the run wants another look (None: it ended)."""
        if r.status.phase in ("Succeeded", "Failed"):
            return None
        ctx = self.ctx
        decision = decide(r.spec, r.status, self._observe(r), ctx.clock(), r.generation)
        new = decision.status
        if decision.create is not None:
            refused = self._create(r, new, decision.create)
            if refused is not None:
                new = failed(new, INVALID_SPEC, refused, r.generation, ctx.clock())
                decision.events.append(Event("Warning", INVALID_SPEC, refused))
            elif decision.create == "shards":
                new.job_name = job_name(r.name, "shards")
        if decision.parallelism is not None:
            patched = ctx.kube.patch(
                "batch/v1", "Job", r.namespace, job_name(r.name, "shards"),
                {"spec": {"parallelism": decision.parallelism}},
            )  # fmt: skip
            ctx.caches.jobs.put(patched)
        for event in decision.events:
            ctx.post_event(r.obj, event.type, event.reason, event.message)
        if new != r.status:
            ctx.write_status(KIND, r.obj, new)
        return None if new.phase in ("Succeeded", "Failed") else decision.requeue_after

    def _job(self, r: Read_, step: Step) -> Body | None:
        """The step's Job from the cache, else from the API server: a restarted operator whose
        watch has not listed everything yet never starts a step again, nor reads its counts from
        nothing."""
        name = job_name(r.name, step)
        job = self.ctx.caches.jobs.get(r.namespace, name)
        if job is None:
            job = self.ctx.kube.get("batch/v1", "Job", r.namespace, name)
            if job is not None:
                job = self.ctx.caches.jobs.put(job)
        return job

    def _observe(self, r: Read_) -> Observation:
        """What the decision needs now, and nothing more: the Jobs of the current step, and pods
        only for a finished step's result, newly failed shards, or a step whose pods wait."""
        spec, status = r.spec, r.status
        target, problem = self._target(r) if status.model_version is None else (None, None)
        artifact = {f"ModelVersion {target.name} spec.artifact.uri": target.uri} if target else {}
        forbidden = self.ctx.forbidden(
            r.namespace,
            {"spec.input.uri": spec.input.uri, "spec.output.uri": spec.output.uri, **artifact},
        )
        step = PHASE_STEP.get(status.phase or "")
        observed: dict[str, Any] = {
            "target": target,
            "target_problem": problem,
            "forbidden": None if forbidden is None else forbidden.message,
        }
        if step is None or forbidden is not None:
            return Observation(**observed)
        job = self._job(r, step)
        observed[f"{step}_job"] = job
        if job is None:
            return Observation(**observed)
        if step == "shards":
            observed["shard_failures"] = self._failures(r, job)
            waiting = _waiting_indexes(job)
            pods = self._pods(r, step, f"{SHARD_LABEL} in ({waiting})") if waiting else []
        else:
            pods = self._pods(r, step)
            if job_finished(job) is not None:
                observed[f"{step}_result"] = termination_result(pods, WORKER)
                pods = []
            if step == "manifest":  # how the shards ended (their deadline) words the result
                observed["shards_job"] = self._job(r, "shards")
        if pods:
            observed["pod_problem"] = blocked(job, pods, self.ctx.events_about(job, pods))
        return Observation(**observed)

    def _target(self, r: Read_) -> tuple[Target | None, Problem | None]:
        """The version the spec names (or the newest approved one), in this namespace only."""
        versions = {
            mv["metadata"]["name"]: mv
            for mv in self.ctx.caches.objects["ModelVersion"].list(r.namespace)
        }
        named = r.spec.model_version
        if named and named not in versions:
            mv = self.ctx.get("ModelVersion", r.namespace, named)
            if mv is not None:
                versions[named] = mv
        name, problem = resolve_target(r.spec, versions)
        if name is None:
            return None, problem
        artifact = versions[name]["spec"]["artifact"]
        return Target(name, str(artifact["uri"]), str(artifact["sha256"])), None

    def _pods(self, r: Read_, step: Step, selector: str = "") -> list[Body]:
        wanted = f"job-name={job_name(r.name, step)}"
        return self.ctx.kube.list_of(
            "v1", "Pod", r.namespace, f"{wanted},{selector}" if selector else wanted
        )

    def _failures(self, r: Read_, job: Body) -> dict[int, Problem]:
        """Why shards that failed since the last look failed (their pods' own words)."""
        shards = unread_failures(r.status, job)
        if not shards:
            return {}
        pods = self._pods(r, "shards", f"{SHARD_LABEL} in ({','.join(map(str, shards))})")
        found = describe_failures(pods, WORKER)
        gone = ("ShardFailed", "the shard failed; its pod, and with it its reason, is gone")
        return {shard: found.get(shard, gone) for shard in shards}

    def _create(self, r: Read_, status: BatchPredictionStatus, step: Step) -> str | None:
        """Create the step's Job; the API server's refusal, naming the Job, when it refuses."""
        ctx = self.ctx
        owner = Owner.from_body(KIND, r.obj)
        left = remaining_seconds(r.spec, status, ctx.clock())
        assert status.model_version and status.model_sha256, "pinned before planning"
        mv = ctx.get("ModelVersion", r.namespace, status.model_version) or {}
        uri = str(mv.get("spec", {}).get("artifact", {}).get("uri", ""))
        if step == "plan":
            ctx.ensure_artifact_storage(r.namespace)
            manifest = build_plan_job(owner, r.spec, ctx.config, left, uri or None)
        else:
            scoring = Scoring(status.model_version, uri, status.model_sha256)
            manifest = (
                build_shards_job(owner, r.spec, scoring, status.shards.total, ctx.config, left)
                if step == "shards"
                else build_manifest_job(owner, r.spec, scoring, ctx.config)
            )
        try:
            ctx.create_job(manifest)
        except (Invalid, Forbidden) as e:  # the spec cannot change: the run ends here
            return describe(e, manifest)
        return None


def _waiting_indexes(job: Body) -> str:
    """While the Job has pods and none is ready: a few indexes neither done nor failed, where a
    pod that cannot start would be (the Job controller starts the lowest first); else ""."""
    spec, job_status = job.get("spec") or {}, job.get("status") or {}
    if not job_status.get("active") or job_status.get("ready"):
        return ""
    ended = parse_indexes(job_status.get("completedIndexes")) | parse_indexes(
        job_status.get("failedIndexes")
    )
    pending = (i for i in range(int(spec.get("completions") or 0)) if i not in ended)
    return ",".join(str(i) for _, i in zip(range(8), pending, strict=False))
