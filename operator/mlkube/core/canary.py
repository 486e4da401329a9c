"""The canary state machine: `decide(spec, status, observation, now) -> Decision`.

Pure: every fact about the world comes in through `Observation`, and what should exist comes out
in the `Decision`. All progress lives in the status it returns, so an operator restarted at any
point resumes exactly where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from mlkube.api.common import ConditionStatus
from mlkube.api.deployment import (
    Analysis,
    AnalysisResult,
    CanaryStep,
    DeploymentPhase,
    DeploymentSpec,
    DeploymentStatus,
    LiveQualityResult,
)
from mlkube.core import replicas
from mlkube.core.analysis import CanaryMetrics, Counters, LiveQuality, window, window_metrics
from mlkube.core.conditions import condition_status, parse_timestamp, set_condition, timestamp
from mlkube.core.history import OPERATOR, UNKNOWN, record

WAIT_FOR_PODS_SECONDS = 5.0
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
WAIT_FOR_TARGET_SECONDS = 5.0
"""How often to look again for a ModelVersion that is missing, unverified or unapproved."""
Action = Literal["promote", "promote-full", "abort", "retry", "rollback"]
ACTIONS: tuple[Action, ...] = ("promote", "promote-full", "abort", "retry", "rollback")


@dataclass(frozen=True)
class Observation:
    target: str | None
    """The ModelVersion the spec asks for, once it exists, is ready and (if required) approved."""
    target_problem: tuple[str, str] | None = None
    """(reason, message) when there is no servable target."""
    ready_replicas: dict[str, int] = field(default_factory=dict)
    metrics: CanaryMetrics | None = None
    """Figures already computed (tests); with `counters`, the window since the last analysis."""
    counters: dict[str, Counters] | None = None
    """Each pod's counters now, keyed `canary/<pod>` and `stable/<pod>`."""
    action: Action | None = None
    """A CLI action not yet carried out."""
    action_id: str | None = None
    """The annotation value that carried the action, stored once it is handled."""
    live_replicas: dict[str, int] = field(default_factory=dict)
    """`spec.replicas` of each version's workload as it is now (an HPA may have changed it)."""
    input_columns: dict[str, frozenset[str]] = field(default_factory=dict)
    """Input schema column names per version, for the stable and the target."""
    waiting: dict[str, tuple[str, str]] = field(default_factory=dict)
    """(reason, message) per version whose pods are not all ready, in Kubernetes' words
    (`core.waiting`: a quota, an unschedulable pod, an image that cannot be pulled)."""
    requester: str | None = None
    """Who asked for `action`, as recorded on it (the history's `by`)."""


@dataclass(frozen=True)
class Workload:
    replicas: int
    traffic: bool
    autoscaled: bool = False
    """The HPA owns `replicas` (the value here is the live one, never a change)."""


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass
class Decision:
    status: DeploymentStatus
    workloads: dict[str, Workload]
    """Versions that should have pods; any other version's workload is removed."""
    weights: dict[str, int]
    """Traffic weights per version (used for Gateway API routes)."""
    events: list[Event]
    requeue_after: float | None


def evaluate_analysis(
    analysis: Analysis,
    metrics: CanaryMetrics | None,
    now: datetime,
    min_requests: int | None = None,
) -> AnalysisResult:
    """Pass, fail or inconclusive; a failure's message carries the failing figure."""
    needed = analysis.min_request_count if min_requests is None else min_requests
    at = timestamp(now)
    if metrics is None or metrics.requests < needed:
        seen = 0 if metrics is None else metrics.requests
        return AnalysisResult(
            result="Inconclusive",
            at=at,
            requests=seen,
            message=f"{seen} requests reached the canary, fewer than minRequestCount {needed}",
        )
    error_rate = Decimal(100 * metrics.errors) / Decimal(max(metrics.requests, 1))
    figures = AnalysisResult(
        result="Passed",
        at=at,
        requests=metrics.requests,
        error_rate_percent=f"{error_rate:.2f}",
        p95_latency_ms=None if metrics.p95_latency_ms is None else f"{metrics.p95_latency_ms:.1f}",
        prediction_shift=None
        if metrics.prediction_shift is None
        else f"{metrics.prediction_shift:.4f}",
        live_quality=_live_result(metrics.live_quality),
    )
    failures = []
    if error_rate > Decimal(analysis.max_error_rate_percent):
        failures.append(
            f"error rate {error_rate:.2f}% exceeds maxErrorRatePercent {analysis.max_error_rate_percent}"
        )
    if metrics.p95_latency_ms is not None and metrics.p95_latency_ms > analysis.max_p95_latency_ms:
        failures.append(
            f"p95 latency {metrics.p95_latency_ms:.1f} ms exceeds maxP95LatencyMs {analysis.max_p95_latency_ms}"
        )
    if metrics.prediction_shift is not None and Decimal(repr(metrics.prediction_shift)) > Decimal(
        analysis.max_prediction_shift
    ):
        failures.append(
            f"prediction shift {metrics.prediction_shift:.4f} exceeds maxPredictionShift "
            f"{analysis.max_prediction_shift}"
        )
    live = metrics.live_quality
    too_few_labels = None
    if analysis.min_labelled_rows is not None and analysis.max_quality_drop is not None:
        labelled = (0, 0) if live is None else (live.canary_labelled, live.stable_labelled)
        drop = None if live is None else live.drop()
        if min(labelled) < analysis.min_labelled_rows or live is None or drop is None:
            too_few_labels = (
                f"{labelled[0]} labelled rows on the canary and {labelled[1]} on the stable, "
                f"fewer than minLabelledRows {analysis.min_labelled_rows} on a side"
            )
        elif Decimal(repr(drop)) > Decimal(analysis.max_quality_drop):
            failures.append(
                f"live {live.metric} {_quality(live.canary)} is {drop:.4g} worse than the "
                f"stable's {_quality(live.stable)}, beyond maxQualityDrop "
                f"{analysis.max_quality_drop}"
            )
    if failures:
        return figures.model_copy(update={"result": "Failed", "message": "; ".join(failures)})
    if too_few_labels is not None:
        return figures.model_copy(update={"result": "Inconclusive", "message": too_few_labels})
    return figures.model_copy(update={"message": f"{metrics.requests} requests within thresholds"})


def _quality(value: float | None) -> str | None:
    return None if value is None else f"{value:.6g}"


def _live_result(live: LiveQuality | None) -> LiveQualityResult | None:
    if live is None:
        return None
    return LiveQualityResult(
        metric=live.metric,
        canary=_quality(live.canary),
        stable=_quality(live.stable),
        canary_labelled_rows=live.canary_labelled,
        stable_labelled_rows=live.stable_labelled,
    )


def missing_columns(obs: Observation, stable: str | None, target: str) -> list[str]:
    """Input columns the target needs that the stable's requests never carried."""
    if stable is None or stable not in obs.input_columns or target not in obs.input_columns:
        return []
    return sorted(obs.input_columns[target] - obs.input_columns[stable])


class Rollout:
    """One rollout decision's working state: the status it edits, the events and requeues it
    collects; `decide` is the public entry."""

    def __init__(
        self,
        spec: DeploymentSpec,
        status: DeploymentStatus,
        obs: Observation,
        generation: int | None,
        now: datetime,
    ) -> None:
        self.spec = spec
        self.before = status
        self.status = status.model_copy(deep=True)
        self.obs = obs
        self.generation = generation
        self.now = now
        self.events: list[Event] = []
        self.requeue: list[float] = []
        self.promoted_from: str | None = None
        """The stable replaced in this decision: the new one starts with at least its pods."""
        self.stalled = False
        """The stable's rollout passed its progress deadline in this decision."""

    # -- helpers ---------------------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        self.requeue.append(max(seconds, 1.0))

    def _available(self, version: str, desired: int) -> bool:
        return self.obs.ready_replicas.get(version, 0) >= desired

    def _since(self, at: str | None) -> float:
        return 0.0 if at is None else (self.now - parse_timestamp(at)).total_seconds()

    def _stable_total(self) -> int:
        """The stable's pod count: the spec's, or with autoscaling the live one (HPA-owned)."""
        autoscaling = self.spec.autoscaling
        return replicas.stable_total(
            self.spec.replicas,
            None if autoscaling is None else autoscaling.min_replicas,
            self.obs.live_replicas.get(self.status.stable_version or "", 0),
        )

    def _split(self, weight: int) -> tuple[int, int]:
        """(stable, canary) pods at `weight` (`replicas.split`)."""
        return replicas.split(
            self._stable_total(),
            weight,
            routed=self.spec.traffic == "GatewayAPI",
            autoscaled=self.spec.autoscaling is not None,
        )

    def _why(self, version: str | None) -> str:
        """': <reason>: <Kubernetes' words>' when the version's pods say why they are not
        ready, else ''."""
        problem = self.obs.waiting.get(version or "")
        return f": {problem[0]}: {problem[1]}" if problem else ""

    def _wait_for_pods(self, canary: str, desired: int) -> None:
        """Wait for the canary's pods, within the progress deadline; past it, roll back."""
        deadline = self.spec.strategy.canary.progress_deadline_seconds
        waited = self._since(self.status.step_started_at)
        if waited >= deadline:
            ready = self.obs.ready_replicas.get(canary, 0)
            self.roll_back(
                "ProgressDeadlineExceeded",
                f"{ready} of {desired} canary pods ready after {deadline}s "
                f"(progressDeadlineSeconds){self._why(canary)}",
            )
            return
        self._wait(min(WAIT_FOR_PODS_SECONDS, deadline - waited))

    def _roll_out_stable(self, desired: int) -> None:
        """The stable's pods are not all ready and no canary runs (a first rollout, a promoted
        canary scaling up, pods lost): Progressing within the progress deadline, counted from
        `stepStartedAt`; past it Degraded (`ProgressDeadlineExceeded`, with what holds the pods),
        as an apps/v1 Deployment reports it. There is nothing to roll back to: the pods stay and
        the Deployment is Healthy once they are ready (their events bring it in)."""
        s = self.status
        deadline = self.spec.strategy.canary.progress_deadline_seconds
        s.step_started_at = s.step_started_at or timestamp(self.now)
        waited = self._since(s.step_started_at)
        if waited < deadline:
            s.phase = "Progressing"
            self._wait(min(WAIT_FOR_PODS_SECONDS, deadline - waited))
            return
        stable = s.stable_version or ""
        ready = self.obs.ready_replicas.get(stable, 0)
        message = (
            f"{ready} of {desired} pods of {stable} ready after {deadline}s "
            f"(progressDeadlineSeconds){self._why(stable)}"
        )
        degraded = next((c for c in s.conditions if c.type == "Degraded"), None)
        if degraded is None or degraded.reason != PROGRESS_DEADLINE_EXCEEDED:
            self.events.append(Event(PROGRESS_DEADLINE_EXCEEDED, message, "Warning"))
        self._degrade(PROGRESS_DEADLINE_EXCEEDED, message)
        self.stalled = True

    def _step(self) -> CanaryStep | None:
        steps = self.spec.strategy.canary.steps
        index = self.status.current_step or 0
        return steps[index] if index < len(steps) else None

    def _advance(self) -> None:
        self.status.current_step = (self.status.current_step or 0) + 1
        self.status.step_started_at = timestamp(self.now)
        self.status.analysis_inconclusive = 0

    # -- transitions -----------------------------------------------------------------------

    def start_canary(self, target: str) -> None:
        replaced = self.status.canary_version
        s = self.status
        s.canary_version = target
        s.current_step = 0
        s.canary_weight = 0
        s.step_started_at = timestamp(self.now)
        s.analysis_failures = 0
        s.analysis_inconclusive = 0
        s.last_analysis = None
        s.analysis_baseline = None  # opened once traffic reaches the canary (`_open_window`)
        if replaced:
            self.events.append(Event("CanaryReplaced", f"canary {replaced} replaced by {target}"))
        self.events.append(
            Event("CanaryStarted", f"rolling out {target} over stable {s.stable_version}")
        )

    def drop_canary(self) -> None:
        s = self.status
        s.canary_version = None
        s.canary_weight = None
        s.current_step = None
        s.step_started_at = None
        s.analysis_inconclusive = 0
        s.analysis_baseline = None

    def promote(self) -> None:
        s = self.status
        promoted = s.canary_version
        delay = self.spec.strategy.canary.scale_down_delay_seconds
        self.promoted_from = s.stable_version
        if delay > 0 and s.stable_version:
            s.previous_stable_version = s.stable_version
            s.scale_down_at = timestamp(self.now + timedelta(seconds=delay))
            self._wait(delay)  # the scale-down is due then, whatever else happens meanwhile
        s.stable_version = promoted
        s.analysis_failures = 0
        self.drop_canary()
        self.events.append(Event("Promoted", f"{promoted} is now stable"))

    def roll_back(self, reason: str, message: str) -> None:
        s = self.status
        s.aborted_version = s.canary_version
        self.drop_canary()
        event = reason if reason == PROGRESS_DEADLINE_EXCEEDED else "RolledBack"
        self.events.append(Event(event, f"{s.aborted_version}: {message}", "Warning"))
        self._degrade(
            reason, f"rolled back {s.aborted_version}: {message}; {s.stable_version} serves"
        )

    def _degrade(self, reason: str, message: str) -> None:
        s = self.status
        s.phase = "Degraded"
        s.conditions = set_condition(
            s.conditions, "Degraded", "True", reason, message, self.generation, self.now
        )

    def _refuse_schema(self, target: str, missing: list[str]) -> None:
        s = self.status
        message = (
            f"{target} needs input columns {', '.join(missing)} that requests to "
            f"{s.stable_version} do not carry; set strategy.canary.allowSchemaChanges to roll it out"
        )
        if s.canary_version:
            self.drop_canary()
        already = next(
            (c for c in s.conditions if c.type == "Degraded" and c.reason == "SchemaIncompatible"),
            None,
        )
        if already is None or already.message != message:
            self.events.append(Event("SchemaIncompatible", message, "Warning"))
        self._degrade("SchemaIncompatible", message)

    def instant_rollback(self) -> None:
        """Back to the warm previous stable; the spec's version is then held as aborted."""
        s = self.status
        if not s.previous_stable_version:
            self.events.append(
                Event("RollbackRefused", "no previous stable version is warm", "Warning")
            )
            return
        current = s.stable_version
        s.stable_version, s.previous_stable_version, s.scale_down_at = (
            s.previous_stable_version,
            None,
            None,
        )
        s.aborted_version = current
        self.drop_canary()
        self.events.append(
            Event("RolledBack", f"{current} rolled back to {s.stable_version}", "Warning")
        )
        self._degrade("RolledBack", f"{current} rolled back by request; {s.stable_version} serves")

    # -- the step machine ------------------------------------------------------------------

    def _counters(self, prefix: str = "") -> dict[str, Counters] | None:
        counters = self.obs.counters
        if counters is None:
            return None
        return {pod: c for pod, c in counters.items() if pod.startswith(prefix)}

    def _open_window(self) -> None:
        """Start the first analysis window at the first look where the canary's ready pods take
        traffic, for both sides at once: 4xx rates are compared over the same stretch of time,
        never against the stable's counts from before the canary (issue 16 item 3)."""
        s, counters = self.status, self.obs.counters
        if (
            s.analysis_baseline is None
            and counters is not None
            and s.canary_weight
            and s.canary_version
            and self.obs.ready_replicas.get(s.canary_version, 0) > 0
        ):
            s.analysis_baseline = dict(counters)

    def _metrics(self) -> CanaryMetrics | None:
        """The figures since the last conclusive analysis (counter resets survived); None
        before the first window opened."""
        now = self.obs.counters
        if now is None:
            return self.obs.metrics
        baseline = self.status.analysis_baseline
        if baseline is None:
            return None

        def since(prefix: str) -> Counters:
            return window({k: v for k, v in now.items() if k.startswith(prefix)}, baseline)

        return window_metrics(since("canary/"), since("stable/"))

    def analyse(self, min_requests: int | None, step: int | None) -> AnalysisResult:
        analysis = self.spec.strategy.canary.analysis
        result = evaluate_analysis(analysis, self._metrics(), self.now, min_requests)
        result.step = step
        self.status.last_analysis = result
        if result.result != "Inconclusive" and self.obs.counters is not None:
            # the next analysis judges only the requests after this one
            self.status.analysis_baseline = dict(self.obs.counters)
        if result.result == "Failed":
            self.status.analysis_failures += 1
            if self.status.analysis_failures >= analysis.failure_limit:
                self.roll_back("AnalysisFailed", result.message)
        return result

    def _analysis_wait(self) -> float:
        """Seconds until this analysis step may measure again (0: now)."""
        last = self.status.last_analysis
        if last is None or last.step != self.status.current_step:
            return 0.0
        return self.spec.strategy.canary.analysis.interval_seconds - self._since(last.at)

    def background_analysis(self) -> None:
        """Between explicit analysis steps, a failing canary is still caught once enough traffic came."""
        analysis = self.spec.strategy.canary.analysis
        last = self.status.last_analysis
        due = last is None or self._since(last.at) >= analysis.interval_seconds
        metrics = self._metrics()
        if due and metrics is not None and metrics.requests >= analysis.min_request_count:
            self.analyse(None, None)

    def run_steps(self) -> None:
        analysis = self.spec.strategy.canary.analysis
        while self.status.canary_version is not None:
            step = self._step()
            if step is None:
                canary = self.status.canary_version
                _, desired = self._split(100)
                if not self._available(canary, desired):
                    self.status.canary_weight = 100
                    self._wait_for_pods(canary, desired)
                    return
                self.promote()
                return
            if step.set_weight is not None:
                self.status.canary_weight = step.set_weight
                _, desired = self._split(step.set_weight)
                if not self._available(self.status.canary_version, desired):
                    self._wait_for_pods(self.status.canary_version, desired)
                    return
                self._open_window()
                self._advance()
            elif step.pause is not None:
                if step.pause.seconds is None:
                    self.status.phase = "Paused"
                    self._wait(analysis.interval_seconds)  # the background analysis goes on
                    return
                left = step.pause.seconds - self._since(self.status.step_started_at)
                if left > 0:
                    self._wait(left)
                    return
                self._advance()
            else:
                wait = self._analysis_wait()
                if wait > 0:
                    self._wait(wait)
                    return
                result = self.analyse(
                    step.analysis.min_request_count if step.analysis else None,
                    self.status.current_step,
                )
                if result.result == "Passed":
                    self._advance()
                    continue
                if result.result == "Inconclusive":
                    self.status.analysis_inconclusive += 1
                    if self.status.analysis_inconclusive >= analysis.inconclusive_limit:
                        self.status.phase = "Paused"
                        self.events.append(Event("AnalysisInconclusive", result.message, "Warning"))
                        return
                if self.status.canary_version is not None:
                    self._wait(analysis.interval_seconds)
                return

    # -- the whole decision ----------------------------------------------------------------

    def run(self) -> Decision:
        """Housekeeping, then the person's action, then the way to the target, then the status."""
        self.status.phase = None
        self.scale_down_previous()
        self.handle_action()
        self.follow_target()
        if self.obs.action is not None:
            self.status.handled_action = self.obs.action_id or self.obs.action
        self._finish_status()
        by = OPERATOR if self.obs.action is None else self.obs.requester or UNKNOWN
        self.status.history = record(self.before, self.status, self.now, by) or None
        return Decision(
            status=self.status,
            workloads=self._workloads(),
            weights=self._weights(),
            events=self.events,
            requeue_after=min(self.requeue) if self.requeue else None,
        )

    def scale_down_previous(self) -> None:
        """The previous stable, kept warm for a fast rollback, goes at its `scaleDownAt`."""
        s = self.status
        if not (s.previous_stable_version and s.scale_down_at):
            return
        left = -self._since(s.scale_down_at)
        if left > 0:
            self._wait(left)
            return
        self.events.append(
            Event("ScaledDown", f"previous stable {s.previous_stable_version} scaled down")
        )
        s.previous_stable_version, s.scale_down_at = None, None

    def handle_action(self) -> None:
        """The actions that act before the target is looked at: retry and rollback (promote and
        abort act on a running canary, in `run_canary`)."""
        s, action = self.status, self.obs.action
        if action == "retry" and s.aborted_version:
            self.events.append(Event("Retry", f"{s.aborted_version} may be rolled out again"))
            s.aborted_version = None
            s.analysis_failures = 0
        if action == "rollback":
            self.instant_rollback()

    def follow_target(self) -> None:
        """What the spec's ModelVersion asks of this rollout, given what serves now."""
        s, target = self.status, self.obs.target
        if target is None:
            self.lose_target()
        elif s.stable_version is None:
            s.stable_version = target
            self.events.append(Event("RollingOut", f"serving {target}"))
        elif target == s.stable_version:
            if s.canary_version:
                self.events.append(
                    Event("CanaryAbandoned", f"spec returned to {target}; canary removed")
                )
                self.drop_canary()
            s.aborted_version = None if s.aborted_version == target else s.aborted_version
        elif target == s.previous_stable_version:
            self.drop_canary()
            s.stable_version, s.previous_stable_version, s.scale_down_at = target, None, None
            self.events.append(Event("FastRollback", f"{target} was still warm and serves again"))
        elif target == s.aborted_version:
            # the rollback's own reason (the failing figure) stays until retry or a new version
            if condition_status(s.conditions, "Degraded") == "True":
                s.phase = "Degraded"
            else:
                self._degrade(
                    "RolledBack", f"{target} was rolled back; run `mlkube retry` to try it again"
                )
        elif (
            s.canary_version != target
            and not self.spec.strategy.canary.allow_schema_changes
            and (missing := missing_columns(self.obs, s.stable_version, target))
        ):
            self._refuse_schema(target, missing)
        else:
            self.run_canary(target)

    def lose_target(self) -> None:
        """No servable ModelVersion: any canary goes, the stable keeps serving, look again soon."""
        s = self.status
        self._wait(WAIT_FOR_TARGET_SECONDS)
        reason, message = self.obs.target_problem or (
            "ModelVersionNotFound",
            "no ModelVersion to serve",
        )
        if s.canary_version:
            self.drop_canary()
        if s.stable_version:
            self._degrade(reason, f"{message}; {s.stable_version} keeps serving")
        else:
            s.phase = "Pending"

    def run_canary(self, target: str) -> None:
        """`target` as the canary: started if new, the person's promote or abort applied, then
        its analysis and steps."""
        s, action = self.status, self.obs.action
        if s.canary_version != target:
            self.start_canary(target)
        if action == "abort":
            self.roll_back("Aborted", "aborted by request")
        elif action == "promote-full":
            self.promote()
        elif action == "promote" and self._step() is not None:
            self._advance()
        current = self._step()
        self._open_window()
        if s.canary_version and (current is None or current.analysis is None):
            self.background_analysis()
        if s.canary_version:
            self.run_steps()

    def _workloads(self) -> dict[str, Workload]:
        """Pods per version. The canary's pods come first: the stable gives up only as many pods
        as the canary has ready, so it keeps its full capacity while a canary cannot start."""
        s, obs = self.status, self.obs
        autoscaled = self.spec.autoscaling is not None
        workloads: dict[str, Workload] = {}
        if s.previous_stable_version:
            live = obs.live_replicas.get(s.previous_stable_version) if autoscaled else None
            workloads[s.previous_stable_version] = Workload(
                replicas.warm(self.spec.replicas, live), traffic=False
            )
        total = self._stable_total()
        stable_replicas, canary_replicas = self._split(
            (s.canary_weight or 0) if s.canary_version else 0
        )
        if s.canary_version and not autoscaled:
            stable_replicas = replicas.canary_first(
                total, stable_replicas, canary_replicas, obs.ready_replicas.get(s.canary_version, 0)
            )
        if s.stable_version:
            if autoscaled and self.promoted_from:
                stable_replicas = replicas.after_promotion(
                    total,
                    obs.live_replicas.get(s.stable_version, 0),
                    obs.live_replicas.get(self.promoted_from, 0),
                )
            workloads[s.stable_version] = Workload(stable_replicas, True, autoscaled=autoscaled)
        if s.canary_version:
            workloads[s.canary_version] = Workload(canary_replicas, traffic=True)
        return workloads

    def _weights(self) -> dict[str, int]:
        """Route weights; no weight moves to a canary without a ready pod behind it."""
        s = self.status
        if not s.stable_version:
            return {}
        if not s.canary_version:
            return {s.stable_version: 100}
        weight = s.canary_weight or 0
        if self.obs.ready_replicas.get(s.canary_version, 0) == 0:
            weight = 0
        return {s.stable_version: 100 - weight, s.canary_version: weight}

    def _finish_status(self) -> None:
        s = self.status
        gen, now = self.generation, self.now
        stable_ready = (
            bool(s.stable_version) and self.obs.ready_replicas.get(s.stable_version or "", 0) > 0
        )
        desired_stable, _ = self._split((s.canary_weight or 0) if s.canary_version else 0)
        stable_available = s.stable_version is not None and self._available(
            s.stable_version, desired_stable
        )
        if s.phase is None:
            if s.canary_version:
                s.phase = "Progressing"
            elif stable_available:
                s.phase, s.step_started_at = "Healthy", None
            else:
                self._roll_out_stable(desired_stable)
        assert s.phase is not None
        phase: DeploymentPhase = s.phase
        if phase != "Degraded":
            s.conditions = set_condition(
                s.conditions, "Degraded", "False", "AsExpected", "", gen, now
            )
        if s.stable_version is None:
            reason, message = self.obs.target_problem or ("Pending", "no version is serving yet")
            s.conditions = set_condition(s.conditions, "Ready", "False", reason, message, gen, now)
        elif stable_ready:
            s.conditions = set_condition(
                s.conditions, "Ready", "True", "Serving", f"{s.stable_version} is serving", gen, now
            )
        else:
            why = self.obs.waiting.get(s.stable_version)
            s.conditions = set_condition(
                s.conditions, "Ready", "False", why[0] if why else "NoReadyReplicas",
                f"{s.stable_version} has no ready pod yet{self._why(s.stable_version)}", gen, now,
            )  # fmt: skip
        progressing_by_phase: dict[DeploymentPhase, tuple[ConditionStatus, str]] = {
            "Progressing": ("True", "CanaryStep" if s.canary_version else "RollingOut"),
            "Paused": ("True", "Paused"),
            "Healthy": ("False", "RolloutComplete"),
            "Degraded": ("False", "RolledBack"),
            "Pending": ("False", "WaitingForModelVersion"),
        }
        progressing, reason = progressing_by_phase[phase]
        if self.stalled:
            reason = PROGRESS_DEADLINE_EXCEEDED  # nothing was rolled back: the stable is stuck
        message = (
            f"{s.canary_version} at weight {s.canary_weight}, step {s.current_step}"
            f"{self._why(s.canary_version)}"
            if s.canary_version
            else f"stable {s.stable_version}{'' if stable_available else self._why(s.stable_version)}"
        )
        s.conditions = set_condition(
            s.conditions,
            "Progressing",
            progressing,
            reason,
            message,
            gen,
            now,
        )
        s.observed_generation = gen


def decide(
    spec: DeploymentSpec,
    status: DeploymentStatus,
    observation: Observation,
    now: datetime,
    generation: int | None = None,
) -> Decision:
    return Rollout(spec, status, observation, generation, now).run()
