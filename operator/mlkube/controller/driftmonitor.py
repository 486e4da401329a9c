"""DriftMonitor reconciler: keep the CronJob pointed at the reference sample, fold each finished
run into status exactly once, and retrain when `core.retrain` says so.

Exactly once: a run is folded into status (which remembers its Job by name) and that status is
written before the run's Job is labelled recorded. A crash in between leaves an unlabelled Job
whose name is already in the history, so it is only labelled; the retrain TrainingJob has a
deterministic name, so creating it twice is a 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mlkube.api.common import API_VERSION, Body
from mlkube.api.crdgen import BY_KIND
from mlkube.api.driftmonitor import DriftMonitorSpec, DriftMonitorStatus
from mlkube.builders.common import MANAGED_BY, Owner, child_name
from mlkube.builders.monitoring import CHECKER, Watched, build_cronjob, cronjob_name
from mlkube.contract import DRIFTMONITOR_LABEL
from mlkube.controller import metrics
from mlkube.controller.context import Read
from mlkube.controller.reconciler import ObjectReconciler
from mlkube.core.conditions import set_condition, timestamp
from mlkube.core.drift import fold_drift_run, performance_condition
from mlkube.core.retrain import decide_retrain
from mlkube.core.training import termination_result
from mlkube.core.waiting import Problem, why_not_running
from mlkube.tenancy import FORBIDDEN_URI

KIND = "DriftMonitor"
POLL_SECONDS = 60.0
"""A safety net: the drift Jobs' own events bring each finished run in at once."""
RUN_POLL_SECONDS = 10.0
"""While a run has not finished: its pods' troubles (no Job event tells them) reach status."""
RECORDED_LABEL = "mlkube.io/recorded"
"""On a drift Job whose result is in the DriftMonitor's status."""

Read_ = Read[DriftMonitorSpec, DriftMonitorStatus]


def _finished(job: Body) -> bool:
    status = job.get("status") or {}
    return bool(status.get("completionTime") or status.get("failed"))


def _model_uri(model_version: dict[str, Any] | None) -> str | None:
    return None if model_version is None else model_version["spec"]["artifact"]["uri"]


class DriftMonitorReconciler(ObjectReconciler[DriftMonitorSpec, DriftMonitorStatus]):
    kind = KIND
    spec_model = DriftMonitorSpec
    status_model = DriftMonitorStatus

    def reconcile(self, r: Read_) -> float | None:
        ctx, spec = self.ctx, r.spec
        now = ctx.clock()
        new = r.status.model_copy(deep=True)
        new.observed_generation = r.generation
        watched, problem = self._reference(r)
        recorded: list[str] = []
        running = False
        if watched is None:
            assert problem is not None
            new.conditions = set_condition(
                new.conditions, "Ready", "False", problem[0], problem[1], r.generation, now
            )
        else:
            owner = Owner.from_body(KIND, r.obj)

            def write() -> None:
                ctx.ensure_artifact_storage(r.namespace)
                ctx.apply(build_cronjob(owner, spec, watched, ctx.config))

            ctx.write_children(KIND, r, write)
            new.cron_job_name = cronjob_name(r.name)
            new.conditions = set_condition(
                new.conditions, "Ready", "True", "Scheduled", f"checking on {spec.schedule}",
                r.generation, now,
            )  # fmt: skip
            new, recorded = self._collect_runs(r, new, now)
            running, stuck = self._current_run(r)
            if stuck is not None:
                new.conditions = set_condition(
                    new.conditions, "Ready", "False", stuck[0], stuck[1], r.generation, now
                )
        if new != r.status:
            ctx.write_status(KIND, r.obj, new)
        for job in recorded:
            patched = ctx.kube.patch(
                "batch/v1",
                "Job",
                r.namespace,
                job,
                {"metadata": {"labels": {RECORDED_LABEL: "true"}}},
            )
            ctx.caches.jobs.put(patched)
        return RUN_POLL_SECONDS if running else POLL_SECONDS

    def _current_run(self, r: Read_) -> tuple[bool, Problem | None]:
        """Whether a run is under way and, when its pods cannot start (a quota, an unschedulable
        pod, an image), why, in Kubernetes' words (`core.waiting`)."""
        runs = [
            j
            for j in self.ctx.caches.jobs.list(r.namespace, {DRIFTMONITOR_LABEL: r.name})
            if not _finished(j)
        ]
        if not runs:
            return False, None
        job = max(runs, key=lambda j: j["metadata"].get("creationTimestamp", ""))
        name = job["metadata"]["name"]
        pods = self.ctx.kube.list_of("v1", "Pod", r.namespace, f"job-name={name}")
        problem = why_not_running(job, pods, self.ctx.events_about(job, pods))
        if problem is None:
            return True, None
        return True, (problem[0], f"drift run {name} cannot start: {problem[1]}")

    def _reference(self, r: Read_) -> tuple[Watched | None, tuple[str, str] | None]:
        """The reference sample and the model version watched, or why there is none."""
        ctx, spec = self.ctx, r.spec
        retrain = spec.action.retrain
        retrain_data = "spec.action.retrain.template.dataset.uri"
        forbidden = ctx.forbidden(
            r.namespace,
            {
                "spec.reference.uri": spec.reference.uri,
                # refused now, not at the first drift, when the TrainingJob it makes would fail
                retrain_data: retrain.template.dataset.uri if retrain else None,
                **{
                    f"spec.performance.feedbackUris[{i}]": uri
                    for i, uri in enumerate(
                        spec.performance.feedback_uris if spec.performance else []
                    )
                },
            },
            data_fields={retrain_data},
        )
        if forbidden is not None:
            return None, (FORBIDDEN_URI, forbidden.message)
        version = spec.reference.model_version
        if version is None:
            deployment = ctx.get("Deployment", r.namespace, spec.deployment)
            if deployment is None and not spec.reference.uri:
                return None, ("DeploymentNotFound", f"Deployment {spec.deployment} does not exist")
            version = ((deployment or {}).get("status") or {}).get("stableVersion")
            if not version and not spec.reference.uri:
                return None, (
                    "WaitingForDeployment",
                    f"Deployment {spec.deployment} serves no version yet",
                )
        mv = ctx.get("ModelVersion", r.namespace, version) if version else None
        if spec.reference.uri:
            return Watched(spec.reference.uri, version, _model_uri(mv)), None
        if mv is None or not mv["spec"].get("referenceSampleUri"):
            return None, ("ReferenceNotFound", f"ModelVersion {version} has no reference sample")
        uri = str(mv["spec"]["referenceSampleUri"])
        forbidden = ctx.forbidden(
            r.namespace, {f"ModelVersion {version} spec.referenceSampleUri": uri}
        )
        if forbidden is not None:
            return None, (FORBIDDEN_URI, forbidden.message)
        return Watched(uri, version, _model_uri(mv)), None

    def _collect_runs(
        self, r: Read_, status: DriftMonitorStatus, now: datetime
    ) -> tuple[DriftMonitorStatus, list[str]]:
        """Every finished drift Job not yet recorded, folded in; returns the Jobs to label."""
        ctx, spec = self.ctx, r.spec
        jobs = [
            j
            for j in ctx.caches.jobs.list(r.namespace, {DRIFTMONITOR_LABEL: r.name})
            if RECORDED_LABEL not in (j["metadata"].get("labels") or {}) and _finished(j)
        ]
        recorded = []
        for job in sorted(jobs, key=lambda j: j["metadata"].get("creationTimestamp", "")):
            name = job["metadata"]["name"]
            recorded.append(name)
            if any(run.job == name for run in status.history):
                continue
            pods = ctx.kube.list_of("v1", "Pod", r.namespace, f"job-name={name}")
            result = termination_result(pods, CHECKER) or {}
            if not result and (why := why_not_running(job, pods, ctx.events_about(job, pods))):
                result = {"message": f"{why[0]}: {why[1]}"}  # a run that never ran says why
            status = fold_drift_run(status, result, name, spec, now)
            run = status.last_run
            assert run is not None
            metrics.DRIFT_SHARE.labels(r.namespace, r.name).set(float(run.drift_share or 0))
            metrics.DRIFT_DETECTED.labels(r.namespace, r.name).set(
                1 if run.verdict == "Drift" else 0
            )
            for column in status.columns:
                metrics.DRIFT_STATISTIC.labels(r.namespace, r.name, column.name).set(
                    float(column.statistic)
                )
            if run.verdict == "Drift":
                ctx.post_event(
                    r.obj, "Warning", "DriftDetected", f"drift in {', '.join(run.drifted_columns)}"
                )
            self._record_performance(r, status)
            status.conditions = performance_condition(
                status.conditions, status.performance, r.generation, now
            )
            rows = int(result.get("loggedRows") or 0)
            decision = decide_retrain(spec, status, run, rows, now)
            status.consecutive_detections = decision.consecutive_detections
            if decision.retrain:
                status = self._retrain(r, status, rows, now)
        return status, recorded

    def _record_performance(self, r: Read_, status: DriftMonitorStatus) -> None:
        """The live-quality gauges and, when degraded, a Warning Event."""
        performance = status.performance
        if performance is None or performance.metric is None:
            return
        version = performance.model_version or ""
        for figure, value in (
            ("realised", performance.value),
            ("estimated", performance.estimated),
        ):
            if value is not None:
                metrics.LIVE_PERFORMANCE.labels(
                    r.namespace, r.name, version, performance.metric, figure
                ).set(float(value))
        metrics.LABELLED_SHARE.labels(r.namespace, r.name, version).set(
            float(performance.labelled_share or 0)
        )
        if performance.verdict == "Degraded":
            self.ctx.post_event(
                r.obj,
                "Warning",
                "PerformanceDegraded",
                f"{version}: live {performance.metric} {performance.value} past the threshold "
                f"(offline {performance.offline}, {performance.labelled_rows} labelled rows)",
            )

    def _retrain(
        self, r: Read_, status: DriftMonitorStatus, logged_rows: int, now: datetime
    ) -> DriftMonitorStatus:
        assert r.spec.action.retrain is not None
        number = status.retrain_count + 1
        job = child_name(r.name, f"retrain-{number}")
        manifest = {
            "apiVersion": API_VERSION,
            "kind": "TrainingJob",
            "metadata": {
                "name": job,
                "namespace": r.namespace,
                "labels": {**MANAGED_BY, DRIFTMONITOR_LABEL: r.name},
            },
            "spec": r.spec.action.retrain.template.to_api(),
        }
        if self.ctx.kube.create_custom(BY_KIND["TrainingJob"], manifest):
            self.ctx.post_event(r.obj, "Normal", "Retraining", f"created TrainingJob {job}")
        return status.model_copy(
            update={
                "retrain_count": number,
                "last_retrain_job": job,
                "last_retrain_time": timestamp(now),
                "rows_at_last_retrain": logged_rows,
            }
        )
