"""Deployment (mlkube.io) reconciler: observe, let `core.canary.decide` choose, write the result.

Observations come from the caches (ModelVersions, the per-version apps/v1 Deployments) and from
the canary's pods' /metrics (scraped with a timeout and a size cap). Events on the apps/v1
Deployments put their owner in the work queue, so pods becoming ready move a rollout on at once.
"""

from __future__ import annotations

from mlkube.api.common import Body
from mlkube.api.deployment import DeploymentSpec, DeploymentStatus
from mlkube.api.modelversion import MlflowRun, ModelVersionSpec, ModelVersionStatus
from mlkube.builders.common import Owner
from mlkube.builders.serving import (
    TRAFFIC_LABEL,
    VERSION_LABEL,
    build_autoscaler,
    build_httproute,
    build_network_policy,
    build_server_deployment,
    build_service,
    server_name,
)
from mlkube.builders.tracking import (
    ALIASES_CONTAINER,
    DIGEST_ANNOTATION,
    alias_job_name,
    build_alias_job,
)
from mlkube.contract import DEPLOYMENT_LABEL
from mlkube.controller import metrics
from mlkube.controller.cache import Routes
from mlkube.controller.context import Context, Read
from mlkube.controller.errors import Forbidden, Invalid
from mlkube.controller.reconciler import ObjectReconciler
from mlkube.core.actions import pending_action, requester
from mlkube.core.aliases import (
    ALIASES_SYNCED,
    SYNC_FAILED,
    AliasSync,
    next_sync,
    synced_condition,
    wanted,
)
from mlkube.core.analysis import Counters, parse_counters
from mlkube.core.canary import Decision, Observation, decide
from mlkube.core.conditions import condition, set_condition, timestamp
from mlkube.core.history import stale_versions
from mlkube.core.routes import ROUTE_CONFLICT, Conflict, Route, desired_route, route_refused
from mlkube.core.serving import resolve_target
from mlkube.core.training import termination_result
from mlkube.core.waiting import Problem, why_not_running

KIND = "Deployment"
AUTOSCALER = ("autoscaling/v2", "HorizontalPodAutoscaler")
NETWORK_POLICY = ("networking.k8s.io/v1", "NetworkPolicy")
HTTPROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")
ROUTE_RECHECK_SECONDS = 60.0
"""A safety net: a refused route looks again this often, besides when the route in its way
changes or goes."""
ALIASES_RECHECK_SECONDS = 60.0
"""A safety net while MLflow's aliases are not in step: the alias Job's events wake it sooner, and
a failed Job is made again once its TTL removed it (`ALIAS_JOB_TTL_SECONDS`)."""
FOLLOW_LATEST_SECONDS = 60.0
"""A safety net: a newly approved version wakes Deployments following latestApproved at once."""

Read_ = Read[DeploymentSpec, DeploymentStatus]


def routes_through_gateway(ctx: Context, namespace: str, name: str) -> bool:
    """Whether the Deployment still routes through a gateway (it is there, not being deleted,
    traffic GatewayAPI): while it does, what its route holds stays held, written yet or not (a
    route admitted a moment ago is held before its HTTPRoute exists, so Deployments looking at
    once are never both admitted; one deleted by hand is written again with what it held)."""
    found = ctx.caches.objects[KIND].get(namespace, name)
    if found is None or (found.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return bool((found.get("spec") or {}).get("traffic") == "GatewayAPI")


def _does(job: Body | None, sync: AliasSync) -> bool:
    """Whether an alias Job does `sync`'s work (its annotation), rather than older work."""
    annotations = (job or {}).get("metadata", {}).get("annotations") or {}
    return job is not None and annotations.get(DIGEST_ANNOTATION) == sync.digest()


class DeploymentReconciler(ObjectReconciler[DeploymentSpec, DeploymentStatus]):
    kind = KIND
    spec_model = DeploymentSpec
    status_model = DeploymentStatus

    def __init__(self, ctx: Context, routes: Routes) -> None:
        super().__init__(ctx)
        self.routes = routes

    def _scrape(self, r: Read_) -> dict[str, Counters] | None:
        """The canary's and the stable's pods' counters, keyed `<role>/<pod>`, scraped at once
        within one deadline. A pod that does not answer is left out of this look; one cut off by
        the time or byte bound makes the look inconclusive (None), with a Warning saying why."""
        versions = {"canary": r.status.canary_version, "stable": r.status.stable_version}
        roles = {}
        for role, version in versions.items():
            if version is not None:
                selector = f"{DEPLOYMENT_LABEL}={r.name},{VERSION_LABEL}={version}"
                for pod in self.ctx.kube.list_of("v1", "Pod", r.namespace, selector):
                    roles[pod["metadata"]["name"]] = role
        scraped = self.ctx.scrape(r.namespace, list(roles), r.spec.port)
        if scraped.exceeded:
            why = "; ".join(f"pod {pod} {reason}" for pod, reason in scraped.exceeded.items())
            message = f"analysis inconclusive: {why}"
            self.ctx.post_event(r.obj, "Warning", "ScrapeLimitExceeded", message)
            return None
        return {
            f"{roles[pod]}/{pod}": parse_counters(text)
            for pod, text in scraped.texts.items()
            if text
        }

    def _waiting(self, r: Read_, children: list[Body]) -> dict[str, Problem]:
        """Why each version's pods that should be ready are not, in Kubernetes' words
        (`core.waiting`): its pods are listed only while some are not ready."""
        waiting = {}
        for child in children:
            wanted = int((child.get("spec") or {}).get("replicas") or 0)
            if int((child.get("status") or {}).get("readyReplicas") or 0) >= wanted:
                continue
            version = child["metadata"]["labels"][VERSION_LABEL]
            selector = f"{DEPLOYMENT_LABEL}={r.name},{VERSION_LABEL}={version}"
            pods = self.ctx.kube.list_of("v1", "Pod", r.namespace, selector)
            problem = why_not_running(child, pods)
            if problem is not None:
                waiting[version] = problem
        return waiting

    def reconcile(self, r: Read_) -> float | None:
        """Returns seconds until the rollout wants another look (None: nothing pending)."""
        ctx, spec, status = self.ctx, r.spec, r.status
        versions = {
            mv["metadata"]["name"]: mv
            for mv in ctx.caches.objects["ModelVersion"].list(r.namespace)
        }
        target, problem = resolve_target(spec, versions)
        children = ctx.caches.servers.list(r.namespace, {DEPLOYMENT_LABEL: r.name})
        ready = {
            c["metadata"]["labels"][VERSION_LABEL]: int(
                (c.get("status") or {}).get("readyReplicas") or 0
            )
            for c in children
        }
        live = {
            c["metadata"]["labels"][VERSION_LABEL]: int((c.get("spec") or {}).get("replicas") or 0)
            for c in children
        }
        columns = {
            version: frozenset(
                col["name"] for col in versions[version]["spec"].get("inputSchema") or []
            )
            for version in (status.stable_version, target)
            if version is not None and version in versions
        }
        counters = self._scrape(r) if status.canary_version else None
        action = pending_action(r.obj["metadata"].get("annotations") or {}, status.handled_action)
        observation = Observation(
            target=target,
            target_problem=problem,
            ready_replicas=ready,
            counters=counters,
            action=action[0] if action else None,
            action_id=action[1] if action else None,
            requester=requester(action[1]) if action else None,
            live_replicas=live,
            input_columns=columns,
            waiting=self._waiting(r, children),
        )
        decision = decide(spec, status, observation, ctx.clock(), r.generation)
        route, conflict = self._route(r, writes=bool(decision.weights))
        ctx.write_children(KIND, r, lambda: self._apply(r, decision, versions, children, route))
        if conflict is not None and decision.weights:
            self._refuse_route(r, decision, conflict)
        decision.status.service_name = r.name
        decision.status.ready_replicas = ready.get(decision.status.stable_version or "", 0)
        aliases_wait = self._sync_aliases(r, decision.status, versions)
        for event in decision.events:
            ctx.post_event(r.obj, event.type, event.reason, event.message)
        if decision.status != status:
            ctx.write_status(KIND, r.obj, decision.status)
        self._wake_model_versions(r, status, decision.status, versions)
        metrics.CANARY_WEIGHT.labels(r.namespace, r.name).set(decision.status.canary_weight or 0)
        metrics.CANARY_STEP.labels(r.namespace, r.name).set(decision.status.current_step or 0)
        waits = [
            decision.requeue_after,
            FOLLOW_LATEST_SECONDS if spec.latest_approved else None,
            ROUTE_RECHECK_SECONDS if conflict is not None else None,
            aliases_wait,
        ]
        return min((w for w in waits if w is not None), default=None)

    def _sync_aliases(
        self, r: Read_, status: DeploymentStatus, versions: dict[str, Body]
    ) -> float | None:
        """MLflow's aliases in step with the stable and canary versions (`core.aliases`), by a
        short Job per registered model; `status` gets mlflowAliases and AliasesSynced. Returns
        when to look again while MLflow is not in step (its Job's events wake it sooner)."""
        ctx = self.ctx
        runs = {}
        for version in (status.stable_version, status.canary_version):
            lineage = ((versions.get(version or "") or {}).get("spec") or {}).get("lineage") or {}
            if version is not None and lineage.get("mlflow"):
                runs[version] = MlflowRun.model_validate(lineage["mlflow"])
        want = wanted(r.namespace, r.name, status, runs)
        sync = next_sync(r.namespace, r.name, want, status.mlflow_aliases or [])
        name = alias_job_name(r.name)
        job = ctx.caches.jobs.get(r.namespace, name) if sync is not None else None
        done = job is not None and bool((job.get("status") or {}).get("succeeded"))
        if sync is not None and done and _does(job, sync):
            status.mlflow_aliases = sync.synced or None
            sync = next_sync(r.namespace, r.name, want, sync.synced)
        failure = None
        if sync is not None and not _does(job, sync):
            if job is not None:
                ctx.kube.delete("batch/v1", "Job", r.namespace, name)
            try:
                ctx.kube.create(build_alias_job(Owner.from_body(KIND, r.obj), sync, ctx.config))
            except (Invalid, Forbidden) as e:  # a quota, an admission webhook
                failure = ("FailedCreate", e.message)
        elif sync is not None and job is not None:
            failure = self._alias_job_failure(job)
        previous = condition(status.conditions, ALIASES_SYNCED)
        found = synced_condition(sync, status.mlflow_aliases or [], failure, previous)
        if found is not None:
            status.conditions = set_condition(
                status.conditions, ALIASES_SYNCED, *found, r.generation, ctx.clock()
            )
            if found[0] == "False" and (previous is None or previous.reason != found[1]):
                ctx.post_event(r.obj, "Warning", found[1], found[2])
        return None if sync is None else ALIASES_RECHECK_SECONDS

    def _alias_job_failure(self, job: Body) -> Problem | None:
        """Why the alias Job failed (its result's reason and message), or cannot run."""
        meta = job["metadata"]
        pods = self.ctx.kube.list_of("v1", "Pod", meta["namespace"], f"job-name={meta['name']}")
        if (job.get("status") or {}).get("failed"):
            result = termination_result(pods, ALIASES_CONTAINER) or {}
            if result.get("reason"):
                return str(result["reason"]), str(result.get("message", ""))
            _, words = why_not_running(job, pods) or ("", "the Job ended without a result")
            return SYNC_FAILED, words
        return why_not_running(job, pods, self.ctx.events_about(job, pods))

    def _wake_model_versions(
        self, r: Read_, before: DeploymentStatus, after: DeploymentStatus, versions: dict[str, Body]
    ) -> None:
        """A ModelVersion derives where it serves from the Deployments' status (its reconciler is
        the one writer of its status): those that do not show this one's yet look at once."""

        def recorded(name: str) -> ModelVersionStatus | None:
            mv = versions.get(name)
            return None if mv is None else ModelVersionStatus.model_validate(mv.get("status") or {})

        for version in stale_versions(r.name, before, after, recorded):
            self.ctx.enqueue(("ModelVersion", r.namespace, version), 0)

    def gone(self, namespace: str, name: str) -> None:
        """A Deployment gone (or going) no longer holds its route's requests: the Deployments
        refused because of it look again at once, not only once its HTTPRoute's deletion is
        seen (the garbage collector may take its time)."""
        if self.routes.get(namespace, name) is None or routes_through_gateway(
            self.ctx, namespace, name
        ):
            return
        self.routes.remove(namespace, name)
        for waiter in self.routes.waiters(namespace, name):
            self.ctx.enqueue((KIND, *waiter), 0)

    def _route(self, r: Read_, writes: bool) -> tuple[Route | None, Conflict | None]:
        """The HTTPRoute to write (the spec's; while that is refused, the one stored, if any)
        and why the spec's is refused, judged against the routes on its Gateway; `writes`:
        a route is written now, so an admitted one is held for this Deployment at once."""
        if r.spec.traffic != "GatewayAPI":
            return None, None
        wanted = desired_route(r.namespace, r.name, r.spec)
        now = timestamp(self.ctx.clock())
        while True:
            own, conflict = self.routes.claim(r.namespace, r.name, wanted, now, writes)
            if conflict is None:
                return wanted, None
            if conflict.holder is None or routes_through_gateway(self.ctx, *conflict.holder):
                break
            # gone unseen: deleted while the watch was down (a re-list reports no deletions),
            # or held for a Deployment that went before its route was written
            self.routes.remove(*conflict.holder)
        if conflict.holder is not None:
            self.routes.wait_for(conflict.holder, (r.namespace, r.name))
        return (None if own is None else own.route), conflict

    def _refuse_route(self, r: Read_, decision: Decision, conflict: Conflict) -> None:
        """Ready False (RouteConflict) naming the route in the way; a Warning when it is new."""
        before = r.status.conditions
        decision.status = route_refused(
            decision.status, before, conflict, r.generation, self.ctx.clock()
        )
        ready = next((c for c in before if c.type == "Ready"), None)
        if ready is None or (ready.reason, ready.message) != (ROUTE_CONFLICT, conflict.message):
            self.ctx.post_event(r.obj, "Warning", ROUTE_CONFLICT, conflict.message)

    def _apply(
        self,
        r: Read_,
        decision: Decision,
        versions: dict[str, Body],
        children: list[Body],
        route: Route | None,
    ) -> None:
        ctx, spec = self.ctx, r.spec
        owner = Owner.from_body(KIND, r.obj)
        # before any server pod: none takes connections from outside its fence
        policy = build_network_policy(owner, spec, ctx.config)
        if policy is not None:
            ctx.apply(policy)
        elif ctx.may_exist(
            NETWORK_POLICY, r.namespace, r.name, owner_is_new=r.status.observed_generation is None
        ):
            ctx.kube.delete(*NETWORK_POLICY, r.namespace, r.name)
            ctx.forget_applied(*NETWORK_POLICY, r.namespace, r.name)
        for version, workload in decision.workloads.items():
            mv = versions.get(version)
            if mv is None:
                continue
            mv_spec = ModelVersionSpec.model_validate(mv["spec"])
            manifest = build_server_deployment(
                owner, spec, version, mv_spec, workload.replicas, ctx.config
            )
            current = ctx.caches.servers.get(r.namespace, manifest["metadata"]["name"])
            live = None if current is None else (current.get("spec") or {}).get("replicas")
            if workload.autoscaled:
                # the HPA owns replicas: re-applied only when the rest changes, with the live count
                ctx.apply(manifest, ignore=("spec", "replicas"))
            else:
                ctx.apply(manifest, force=live != workload.replicas)
            self._label_traffic(r, version, workload.traffic, current)
        ctx.apply(build_service(owner, spec))
        if spec.traffic == "GatewayAPI" and decision.weights:
            for version in decision.weights:
                ctx.apply(build_service(owner, spec, version))
            if route is not None:
                ctx.apply(build_httproute(owner, spec, route, decision.weights))
        elif spec.traffic != "GatewayAPI" and self.routes.get(r.namespace, r.name) is not None:
            # traffic back to Replicas: the route goes, and with it its hold on the gateway
            ctx.kube.delete(*HTTPROUTE, r.namespace, r.name)
            ctx.forget_applied(*HTTPROUTE, r.namespace, r.name)
            self.routes.remove(r.namespace, r.name)
        # only once the route no longer names them: a gateway never routes to a deleted backend
        for child in children:
            version = child["metadata"]["labels"][VERSION_LABEL]
            if version not in decision.workloads:
                ctx.kube.delete("apps/v1", "Deployment", r.namespace, child["metadata"]["name"])
                ctx.forget_applied("apps/v1", "Deployment", r.namespace, child["metadata"]["name"])
                if spec.traffic == "GatewayAPI":
                    ctx.kube.delete("v1", "Service", r.namespace, server_name(r.name, version))
        stable = decision.status.stable_version
        autoscaler = build_autoscaler(owner, spec, stable) if stable else None
        if autoscaler is not None:
            ctx.apply(autoscaler)
        elif ctx.may_exist(
            AUTOSCALER, r.namespace, r.name, owner_is_new=r.status.observed_generation is None
        ):
            # autoscaling removed: no HPA may keep scaling the stable
            ctx.kube.delete(*AUTOSCALER, r.namespace, r.name)
            ctx.forget_applied(*AUTOSCALER, r.namespace, r.name)

    def _label_traffic(self, r: Read_, version: str, traffic: bool, current: Body | None) -> None:
        """Pods of a version take requests only while it should: the Service selects the label."""
        if current is None or not (current.get("status") or {}).get("replicas"):
            return  # no pods to label (yet); new ones start with the template's label
        selector = f"{DEPLOYMENT_LABEL}={r.name},{VERSION_LABEL}={version}"
        wanted = "on" if traffic else "off"
        for pod in self.ctx.kube.list_of("v1", "Pod", r.namespace, selector):
            if pod["metadata"].get("labels", {}).get(TRAFFIC_LABEL) != wanted:
                self.ctx.kube.patch(
                    "v1", "Pod", r.namespace, pod["metadata"]["name"],
                    {"metadata": {"labels": {TRAFFIC_LABEL: wanted}}},
                )  # fmt: skip
