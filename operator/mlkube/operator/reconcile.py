"""One reconcile per kind: read the world fresh, ask the pure modules, write what they decided.

Each reconcile re-reads its object under a per-object lock, so a timer and a change handler that
fire together never act on a stale status; every write is idempotent (server-side apply,
deterministic names, create-or-409), so a restart anywhere resumes without duplicates.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mlkube.actions import pending_action
from mlkube.analysis import canary_metrics
from mlkube.api.common import Condition
from mlkube.api.crdgen import BY_KIND, Kind
from mlkube.api.deployment import DeploymentSpec, DeploymentStatus
from mlkube.api.driftmonitor import ColumnResult, DriftMonitorSpec, DriftMonitorStatus, DriftRun
from mlkube.api.modelversion import ModelVersionSpec, ModelVersionStatus
from mlkube.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from mlkube.builders.common import Owner, artifact_pvc, child_name
from mlkube.builders.monitoring import CHECKER, build_cronjob, cronjob_name
from mlkube.builders.serving import (
    DEPLOYMENT_LABEL,
    TRAFFIC_LABEL,
    VERSION_LABEL,
    build_autoscaler,
    build_httproute,
    build_server_deployment,
    build_service,
    server_name,
)
from mlkube.builders.training import build_job, build_verify_job, job_name, verify_job_name
from mlkube.canary import Decision, Observation, decide
from mlkube.conditions import set_condition, timestamp
from mlkube.config import OperatorConfig
from mlkube.kube import Body, Cluster
from mlkube.operator import metrics
from mlkube.retrain import decide_retrain
from mlkube.tenancy import FORBIDDEN_URI, ForbiddenURI, forbidden_uri
from mlkube.training import (
    Outcome,
    model_version_manifest,
    next_version,
    termination_result,
    training_outcome,
    training_status,
)

SpecT = TypeVar("SpecT", bound=BaseModel)
StatusT = TypeVar("StatusT", bound=BaseModel)
EventSink = Callable[[Body, str, str, str], None]
"""(object, type, reason, message) -> posts a Kubernetes Event."""

TRAINING_POLL_SECONDS = 3.0
VERIFY_POLL_SECONDS = 3.0
FOLLOW_LATEST_SECONDS = 15.0
"""How soon a Deployment following latestApproved notices a newly approved version."""
DRIFT_POLL_SECONDS = 10.0
RECORDED_LABEL = "mlkube.io/recorded"
"""On a drift Job whose result is in the DriftMonitor's status."""
_locks: defaultdict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)
_version_lock = threading.Lock()
_claimed_versions: dict[tuple[str, str], int] = {}


def _now() -> datetime:
    return datetime.now(UTC)


def _dump(model: BaseModel) -> Body:
    """A status for a merge patch: camelCase, and None where a field must be cleared."""
    return model.model_dump(by_alias=True, mode="json")


class Reconciler:
    def __init__(self, cluster: Cluster, config: OperatorConfig, post_event: EventSink) -> None:
        self.kube = cluster
        self.config = config
        self.post_event = post_event

    def _read(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        spec_model: type[SpecT],
        status_model: type[StatusT],
    ) -> tuple[Body, SpecT, StatusT] | None:
        """The object fresh from the API server, parsed; None when it is gone or its spec is invalid
        (then marked Ready=False with the reason)."""
        obj = self.kube.get_object(kind, namespace, name)
        if obj is None:
            return None
        try:
            spec = spec_model.model_validate(obj["spec"])
        except ValidationError as e:
            self._fail_spec(kind, obj, e)
            return None
        return obj, spec, status_model.model_validate(obj.get("status") or {})

    def _fail_spec(self, kind: Kind, obj: Body, error: ValidationError) -> None:
        """A spec the schema let through but the models refuse: Ready=False, never a crash loop."""
        meta = obj["metadata"]
        status = obj.get("status") or {}
        conditions = [c for c in status.get("conditions", []) if c.get("type") != "Ready"]
        message = "; ".join(
            f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
        )
        parsed = [Condition.model_validate(c) for c in conditions]
        parsed = set_condition(
            parsed, "Ready", "False", "InvalidSpec", message, meta.get("generation"), _now()
        )
        self.kube.patch_status(
            kind,
            meta["namespace"],
            meta["name"],
            {
                "conditions": [c.to_api() for c in parsed],
                "observedGeneration": meta.get("generation"),
            },
        )

    # -- TrainingJob ----------------------------------------------------------------------------

    def _version_for(
        self, namespace: str, name: str, spec: TrainingJobSpec, job: Body | None
    ) -> int:
        """The version this TrainingJob trains: the one its Job carries, or the next free one."""
        if job is not None:
            return int(job["metadata"]["annotations"]["mlkube.io/model-version"])
        with _version_lock:
            taken = [
                int(mv["spec"]["version"])
                for mv in self.kube.list_objects(BY_KIND["ModelVersion"], namespace)
                if mv["spec"].get("model") == spec.model
            ]
            taken += [
                int(tj["status"]["version"])
                for tj in self.kube.list_objects(BY_KIND["TrainingJob"], namespace)
                if tj["spec"].get("model") == spec.model
                and (tj.get("status") or {}).get("version")
                and tj["metadata"]["name"] != name
            ]
            key = (namespace, spec.model)
            version = next_version([*taken, _claimed_versions.get(key, 0)])
            _claimed_versions[key] = version
            return version

    def trainingjob(self, namespace: str, name: str) -> float | None:
        """Returns seconds until the training wants another look (None: finished or suspended)."""
        kind = BY_KIND["TrainingJob"]
        with _locks[(kind.kind, namespace, name)], metrics.reconciling(kind.kind):
            read = self._read(kind, namespace, name, TrainingJobSpec, TrainingJobStatus)
            if read is None:
                return None
            obj, spec, status = read
            if status.phase in ("Succeeded", "Failed"):
                return None
            owner = Owner.from_body("TrainingJob", obj)
            generation = obj["metadata"].get("generation")
            job = self.kube.get_any("batch/v1", "Job", namespace, job_name(name))
            version = self._version_for(namespace, name, spec, job)
            if job is None:
                champion = self._champion(namespace, spec)
                if isinstance(champion, str):
                    self._finish_training(obj, status, "ChampionNotFound", champion, generation)
                    return None
                forbidden = self._forbidden(
                    namespace,
                    {
                        "spec.dataset.uri": spec.dataset.uri,
                        "spec.qualityGates.champion.modelVersion": champion[0]
                        if champion
                        else None,
                    },
                )
                if forbidden is not None:
                    self._finish_training(obj, status, FORBIDDEN_URI, forbidden.message, generation)
                    return None
                self._ensure_artifact_storage(namespace)
                self.kube.create(build_job(owner, spec, version, self.config, champion))
                self.post_event(obj, "Normal", "JobCreated", f"training {spec.model} v{version}")
                job = self.kube.get_any("batch/v1", "Job", namespace, job_name(name))
            elif bool((job.get("spec") or {}).get("suspend")) != spec.suspend:
                self.kube.apply(build_job(owner, spec, version, self.config))
            pods = self.kube.list_any("v1", "Pod", namespace, f"job-name={job_name(name)}")
            outcome = training_outcome(job, pods)
            new = training_status_with_version(status, outcome, version, job_name(name), generation)
            if outcome.phase == "Succeeded":
                new = self._register(obj, owner, spec, outcome.result, new)
            if new.phase != status.phase:
                kind_of = "Warning" if new.phase == "Failed" else "Normal"
                self.post_event(obj, kind_of, outcome.reason, outcome.message or str(new.phase))
            if new != status:
                self.kube.patch_status(kind, namespace, name, _dump(new))
            return TRAINING_POLL_SECONDS if new.phase in ("Pending", "Running") else None

    def _champion(self, namespace: str, spec: TrainingJobSpec) -> tuple[str, str] | str | None:
        gate = spec.quality_gates.champion
        if gate is None:
            return None
        champion = self.kube.get_object(BY_KIND["ModelVersion"], namespace, gate.model_version)
        if champion is None:
            return f"qualityGates.champion: ModelVersion {gate.model_version} does not exist"
        artifact = champion["spec"]["artifact"]
        return str(artifact["uri"]), str(artifact["sha256"])

    def _finish_training(
        self,
        obj: Body,
        status: TrainingJobStatus,
        reason: str,
        message: str,
        generation: int | None,
    ) -> None:
        new = training_status(status, Outcome("Failed", reason, message), generation, _now())
        meta = obj["metadata"]
        self.post_event(obj, "Warning", reason, message)
        self.kube.patch_status(BY_KIND["TrainingJob"], meta["namespace"], meta["name"], _dump(new))

    def _forbidden(self, namespace: str, uris: dict[str, str | None]) -> ForbiddenURI | None:
        return forbidden_uri(
            uris, self.config.artifact_root, namespace, self.config.allowed_uri_prefixes
        )

    def _ensure_artifact_storage(self, namespace: str) -> None:
        claim = artifact_pvc(namespace, self.config)
        if claim is not None:
            self.kube.create(claim)

    def _register(
        self,
        obj: Body,
        owner: Owner,
        spec: TrainingJobSpec,
        result: dict[str, Any],
        status: TrainingJobStatus,
    ) -> TrainingJobStatus:
        image = spec.image or self.config.runtime_image
        if not result.get("columns"):
            failed = status.model_copy(update={"phase": "Failed"})
            failed.conditions = set_condition(
                failed.conditions,
                "Failed",
                "True",
                "SchemaTooLarge",
                "the input schema did not fit the termination message; register the version by hand",
                status.observed_generation,
                _now(),
            )
            return failed
        manifest = model_version_manifest(owner, spec, result, image, _now())
        if self.kube.create_custom(BY_KIND["ModelVersion"], manifest):
            self.post_event(
                obj, "Normal", "Registered", f"ModelVersion {manifest['metadata']['name']}"
            )
        return status.model_copy(update={"model_version": manifest["metadata"]["name"]})

    # -- ModelVersion ---------------------------------------------------------------------------

    def modelversion(self, namespace: str, name: str) -> float | None:
        """Returns seconds until verification wants another look (None: settled)."""
        kind = BY_KIND["ModelVersion"]
        with _locks[(kind.kind, namespace, name)], metrics.reconciling(kind.kind):
            read = self._read(kind, namespace, name, ModelVersionSpec, ModelVersionStatus)
            if read is None:
                return None
            obj, spec, status = read
            generation = obj["metadata"].get("generation")
            now = _now()
            new = status.model_copy(deep=True)
            new.observed_generation = generation
            approval = spec.approval
            new.approved = bool(approval and approval.approved)
            approved_reason, approved_message = (
                ("Approved", f"approved by {approval.by}")
                if approval and approval.approved
                else ("Rejected", f"rejected by {approval.by}")
                if approval
                else ("AwaitingApproval", f"run `mlkube approve {name}`")
            )
            new.conditions = set_condition(
                new.conditions, "Approved", "True" if new.approved else "False",
                approved_reason, approved_message, generation, now,
            )  # fmt: skip
            forbidden = self._forbidden(
                namespace,
                {
                    "spec.artifact.uri": spec.artifact.uri,
                    "spec.referenceSampleUri": spec.reference_sample_uri,
                },
            )
            if forbidden is not None:
                new.phase, new.verified_sha256 = "Invalid", None
                new.conditions = set_condition(
                    new.conditions,
                    "Ready",
                    "False",
                    FORBIDDEN_URI,
                    forbidden.message,
                    generation,
                    now,
                )
            elif new.verified_sha256 != spec.artifact.sha256 and (
                new.phase != "Invalid" or _ready_reason(new.conditions) == FORBIDDEN_URI
            ):
                new = self._verify(obj, spec, new, generation, now)
            if new != status:
                if new.phase != status.phase:
                    self.post_event(
                        obj, "Normal" if new.phase == "Ready" else "Warning",
                        new.conditions[-1].reason if new.conditions else "", str(new.phase),
                    )  # fmt: skip
                self.kube.patch_status(kind, namespace, name, _dump(new))
            self._count_versions(namespace)
            return VERIFY_POLL_SECONDS if new.phase == "Pending" else None

    def _verify(
        self,
        obj: Body,
        spec: ModelVersionSpec,
        status: ModelVersionStatus,
        generation: int | None,
        now: datetime,
    ) -> ModelVersionStatus:
        """Check the artifact with a verify Job (the operator does not mount the store)."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        owner = Owner.from_body("ModelVersion", obj)
        job = self.kube.get_any("batch/v1", "Job", namespace, verify_job_name(name))
        if (
            job is None
            or job["metadata"].get("annotations", {}).get("mlkube.io/sha256")
            != spec.artifact.sha256
        ):
            if job is not None:
                self.kube.delete_any("batch/v1", "Job", namespace, verify_job_name(name))
            self._ensure_artifact_storage(namespace)
            self.kube.create(
                build_verify_job(
                    owner, spec.artifact.uri, spec.artifact.sha256, self.config, spec.artifact.files
                )
            )
            job = None
        pods = (
            self.kube.list_any("v1", "Pod", namespace, f"job-name={verify_job_name(name)}")
            if job
            else []
        )
        result = termination_result(pods) if job else None
        s = status.model_copy(deep=True)
        if result is None:
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
            reason, message, ready = (
                str(result.get("reason", "VerifyFailed")),
                str(result.get("message", "")),
                "False",
            )
        s.conditions = set_condition(s.conditions, "Ready", ready, reason, message, generation, now)  # type: ignore[arg-type]
        return s

    def _count_versions(self, namespace: str) -> None:
        counts: dict[str, int] = defaultdict(int)
        for mv in self.kube.list_objects(BY_KIND["ModelVersion"], namespace):
            counts[str((mv.get("status") or {}).get("phase") or "Pending")] += 1
        for phase in ("Pending", "Ready", "Invalid"):
            metrics.MODEL_VERSIONS.labels(namespace, phase).set(counts.get(phase, 0))

    # -- Deployment -----------------------------------------------------------------------------

    def _resolve_target(
        self, namespace: str, spec: DeploymentSpec
    ) -> tuple[str | None, tuple[str, str] | None, dict[str, Body]]:
        """The servable ModelVersion the spec asks for, or why there is none; plus the versions read."""
        versions = {
            mv["metadata"]["name"]: mv
            for mv in self.kube.list_objects(BY_KIND["ModelVersion"], namespace)
        }
        if spec.model_version:
            mv = versions.get(spec.model_version)
            if mv is None:
                return (
                    None,
                    ("ModelVersionNotFound", f"ModelVersion {spec.model_version} does not exist"),
                    versions,
                )
            target, problem = servable(mv, spec.require_approval)
            return target, problem, versions
        candidates = sorted(
            (mv for mv in versions.values() if mv["spec"].get("model") == spec.model),
            key=lambda mv: int(mv["spec"]["version"]),
            reverse=True,
        )
        for mv in candidates:
            target, _ = servable(mv, True)
            if target:
                return target, None, versions
        return (
            None,
            ("NoApprovedVersion", f"model {spec.model} has no approved, verified ModelVersion"),
            versions,
        )

    def _scrape(self, namespace: str, name: str, version: str | None, port: int) -> list[str]:
        if version is None:
            return []
        selector = f"{DEPLOYMENT_LABEL}={name},{VERSION_LABEL}={version}"
        pods = self.kube.list_any("v1", "Pod", namespace, selector)
        texts = [self.kube.scrape(namespace, pod["metadata"]["name"], port) for pod in pods]
        return [t for t in texts if t]

    def deployment(self, namespace: str, name: str) -> float | None:
        """Returns seconds until the rollout wants another look (None: nothing pending)."""
        kind = BY_KIND["Deployment"]
        with _locks[(kind.kind, namespace, name)], metrics.reconciling(kind.kind):
            read = self._read(kind, namespace, name, DeploymentSpec, DeploymentStatus)
            if read is None:
                return None
            obj, spec, status = read
            target, problem, versions = self._resolve_target(namespace, spec)
            children = self.kube.list_any(
                "apps/v1", "Deployment", namespace, f"{DEPLOYMENT_LABEL}={name}"
            )
            ready = {
                c["metadata"]["labels"][VERSION_LABEL]: int(
                    (c.get("status") or {}).get("readyReplicas") or 0
                )
                for c in children
            }
            metrics_now = None
            if status.canary_version:
                metrics_now = canary_metrics(
                    self._scrape(namespace, name, status.canary_version, spec.port),
                    self._scrape(namespace, name, status.stable_version, spec.port),
                )
            action = pending_action(obj["metadata"].get("annotations") or {}, status.handled_action)
            observation = Observation(
                target=target,
                target_problem=problem,
                ready_replicas=ready,
                metrics=metrics_now,
                action=action[0] if action else None,
                action_id=action[1] if action else None,
            )
            decision = decide(spec, status, observation, _now(), obj["metadata"].get("generation"))
            self._apply_serving(obj, spec, decision, versions, children)
            decision.status.service_name = name
            decision.status.ready_replicas = ready.get(decision.status.stable_version or "", 0)
            for event in decision.events:
                self.post_event(obj, event.type, event.reason, event.message)
            if decision.status != status:
                self.kube.patch_status(kind, namespace, name, _dump(decision.status))
            metrics.CANARY_WEIGHT.labels(namespace, name).set(decision.status.canary_weight or 0)
            metrics.CANARY_STEP.labels(namespace, name).set(decision.status.current_step or 0)
            waits = [
                decision.requeue_after,
                FOLLOW_LATEST_SECONDS if spec.latest_approved else None,
            ]
            return min((w for w in waits if w is not None), default=None)

    def _apply_serving(
        self,
        obj: Body,
        spec: DeploymentSpec,
        decision: Decision,
        versions: dict[str, Body],
        children: list[Body],
    ) -> None:
        owner = Owner.from_body("Deployment", obj)
        namespace, name = owner.namespace, owner.name
        for version, workload in decision.workloads.items():
            mv = versions.get(version)
            if mv is None:
                continue
            mv_spec = ModelVersionSpec.model_validate(mv["spec"])
            self.kube.apply(
                build_server_deployment(
                    owner, spec, version, mv_spec, workload.replicas, self.config
                )
            )
            selector = f"{DEPLOYMENT_LABEL}={name},{VERSION_LABEL}={version}"
            wanted = "on" if workload.traffic else "off"
            pods = self.kube.list_any("v1", "Pod", namespace, selector)
            if any(p["metadata"].get("labels", {}).get(TRAFFIC_LABEL) != wanted for p in pods):
                self.kube.label_pods(namespace, selector, {TRAFFIC_LABEL: wanted})
        for child in children:
            version = child["metadata"]["labels"][VERSION_LABEL]
            if version not in decision.workloads:
                self.kube.delete_any("apps/v1", "Deployment", namespace, child["metadata"]["name"])
                if spec.traffic == "GatewayAPI":
                    self.kube.delete_any("v1", "Service", namespace, server_name(name, version))
        self.kube.apply(build_service(owner, spec))
        if spec.traffic == "GatewayAPI" and decision.weights:
            for version in decision.weights:
                self.kube.apply(build_service(owner, spec, version))
            self.kube.apply(build_httproute(owner, spec, decision.weights))
        stable = decision.status.stable_version
        autoscaler = build_autoscaler(owner, spec, stable) if stable else None
        if autoscaler is not None:
            self.kube.apply(autoscaler)

    # -- DriftMonitor ---------------------------------------------------------------------------

    def driftmonitor(self, namespace: str, name: str) -> float | None:
        """Returns seconds until the next look for finished drift runs."""
        kind = BY_KIND["DriftMonitor"]
        with _locks[(kind.kind, namespace, name)], metrics.reconciling(kind.kind):
            read = self._read(kind, namespace, name, DriftMonitorSpec, DriftMonitorStatus)
            if read is None:
                return None
            obj, spec, status = read
            generation = obj["metadata"].get("generation")
            now = _now()
            new = status.model_copy(deep=True)
            new.observed_generation = generation
            reference, problem = self._reference(namespace, spec)
            if reference is None:
                assert problem is not None
                new.conditions = set_condition(
                    new.conditions, "Ready", "False", problem[0], problem[1], generation, now
                )
            else:
                owner = Owner.from_body("DriftMonitor", obj)
                self._ensure_artifact_storage(namespace)
                self.kube.apply(build_cronjob(owner, spec, reference, self.config))
                new.cron_job_name = cronjob_name(name)
                new.conditions = set_condition(
                    new.conditions,
                    "Ready",
                    "True",
                    "Scheduled",
                    f"checking on {spec.schedule}",
                    generation,
                    now,
                )
                new = self._collect_runs(obj, spec, new, now)
            if new != status:
                self.kube.patch_status(kind, namespace, name, _dump(new))
            return DRIFT_POLL_SECONDS

    def _reference(
        self, namespace: str, spec: DriftMonitorSpec
    ) -> tuple[str | None, tuple[str, str] | None]:
        if spec.reference.uri:
            forbidden = self._forbidden(namespace, {"spec.reference.uri": spec.reference.uri})
            if forbidden is not None:
                return None, (FORBIDDEN_URI, forbidden.message)
            return spec.reference.uri, None
        version = spec.reference.model_version
        if version is None:
            deployment = self.kube.get_object(BY_KIND["Deployment"], namespace, spec.deployment)
            if deployment is None:
                return None, ("DeploymentNotFound", f"Deployment {spec.deployment} does not exist")
            version = (deployment.get("status") or {}).get("stableVersion")
            if not version:
                return None, (
                    "WaitingForDeployment",
                    f"Deployment {spec.deployment} serves no version yet",
                )
        mv = self.kube.get_object(BY_KIND["ModelVersion"], namespace, version)
        if mv is None or not mv["spec"].get("referenceSampleUri"):
            return None, ("ReferenceNotFound", f"ModelVersion {version} has no reference sample")
        uri = str(mv["spec"]["referenceSampleUri"])
        forbidden = self._forbidden(
            namespace, {f"ModelVersion {version} spec.referenceSampleUri": uri}
        )
        if forbidden is not None:
            return None, (FORBIDDEN_URI, forbidden.message)
        return uri, None

    def _collect_runs(
        self, obj: Body, spec: DriftMonitorSpec, status: DriftMonitorStatus, now: datetime
    ) -> DriftMonitorStatus:
        """Fold every finished drift Job not yet seen into status; retrain when the rules say so."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        seen = {run.job for run in status.history}
        selector = f"mlkube.io/driftmonitor={name},!{RECORDED_LABEL}"
        jobs = self.kube.list_any("batch/v1", "Job", namespace, selector)
        finished = [
            j
            for j in jobs
            if (j.get("status") or {}).get("completionTime")
            or (j.get("status") or {}).get("failed")
        ]
        for job in sorted(finished, key=lambda j: j["metadata"].get("creationTimestamp", "")):
            job_name_ = job["metadata"]["name"]
            # marked first: a run is never folded twice, even across a restart
            self.kube.label("batch/v1", "Job", namespace, job_name_, {RECORDED_LABEL: "true"})
            if job_name_ in seen:
                continue
            pods = self.kube.list_any("v1", "Pod", namespace, f"job-name={job_name_}")
            result = termination_result(pods, CHECKER) or {}
            status = fold_drift_run(status, result, job_name_, spec, now)
            run = status.last_run
            assert run is not None
            metrics.DRIFT_SHARE.labels(namespace, name).set(float(run.drift_share or 0))
            metrics.DRIFT_DETECTED.labels(namespace, name).set(1 if run.verdict == "Drift" else 0)
            for column in status.columns:
                metrics.DRIFT_STATISTIC.labels(namespace, name, column.name).set(
                    float(column.statistic)
                )
            if run.verdict == "Drift":
                self.post_event(
                    obj, "Warning", "DriftDetected", f"drift in {', '.join(run.drifted_columns)}"
                )
            decision = decide_retrain(spec, status, run, int(result.get("loggedRows") or 0), now)
            status.consecutive_detections = decision.consecutive_detections
            if decision.retrain:
                status = self._retrain(obj, spec, status, int(result.get("loggedRows") or 0), now)
        return status

    def _retrain(
        self,
        obj: Body,
        spec: DriftMonitorSpec,
        status: DriftMonitorStatus,
        logged_rows: int,
        now: datetime,
    ) -> DriftMonitorStatus:
        assert spec.action.retrain is not None
        owner = Owner.from_body("DriftMonitor", obj)
        number = status.retrain_count + 1
        job = child_name(owner.name, f"retrain-{number}")
        manifest = {
            "apiVersion": "mlkube.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {
                "name": job,
                "namespace": owner.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "mlkube",
                    "mlkube.io/driftmonitor": owner.name,
                },
            },
            "spec": spec.action.retrain.template.to_api(),
        }
        if self.kube.create_custom(BY_KIND["TrainingJob"], manifest):
            self.post_event(obj, "Normal", "Retraining", f"created TrainingJob {job}")
        return status.model_copy(
            update={
                "retrain_count": number,
                "last_retrain_job": job,
                "last_retrain_time": timestamp(now),
                "rows_at_last_retrain": logged_rows,
            }
        )


def _ready_reason(conditions: list[Condition]) -> str | None:
    return next((c.reason for c in conditions if c.type == "Ready"), None)


def servable(mv: Body, require_approval: bool) -> tuple[str | None, tuple[str, str] | None]:
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


def training_status_with_version(
    status: TrainingJobStatus, outcome: Outcome, version: int, job: str, generation: int | None
) -> TrainingJobStatus:
    new = training_status(status, outcome, generation, _now())
    return new.model_copy(update={"version": version, "job_name": job})


def fold_drift_run(
    status: DriftMonitorStatus,
    result: dict[str, Any],
    job: str,
    spec: DriftMonitorSpec,
    now: datetime,
) -> DriftMonitorStatus:
    """One drift Job's result folded into status: last run, per-column figures, bounded history."""
    verdict = (
        result.get("verdict")
        if result.get("verdict") in ("NoDrift", "Drift", "InsufficientData")
        else "Error"
    )
    run = DriftRun(
        at=timestamp(now),
        verdict=verdict,
        rows=int(result.get("rows") or 0),
        drift_share=result.get("driftShare"),
        drifted_columns=list(result.get("driftedColumns") or []),
        job=job,
        message=None
        if verdict != "Error"
        else str(result.get("message") or "the run left no result")[-1024:],
    )
    columns = [ColumnResult.model_validate(c) for c in result.get("columns") or []]
    history = [*status.history, run][-spec.history_limit :]
    return status.model_copy(update={"last_run": run, "columns": columns, "history": history})
