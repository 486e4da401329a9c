"""Deployment (deployments.mlkube.io): serve a ModelVersion, rolling new ones out as a canary."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mlkube.api.common import (
    DECIMAL,
    DNS_LABEL,
    MESSAGE_LENGTH,
    NAME_LENGTH,
    NUMBER_LENGTH,
    OBJECT_NAME_LENGTH,
    TEXT_LENGTH,
    URI_LENGTH,
    ApiModel,
    JsonDict,
    Resources,
    StatusBase,
    api_config,
    at_most,
    cel,
    keys_at_most,
    validations,
)


class Pause(ApiModel):
    seconds: int | None = Field(
        default=None, ge=0, description="How long to wait; unset waits for `mlkube promote`."
    )


class AnalysisStep(ApiModel):
    """Run the analysis once now; the thresholds come from `strategy.canary.analysis`."""

    min_request_count: int | None = Field(default=None, ge=0, description="Override for this step.")


class CanaryStep(ApiModel):
    model_config = api_config(
        cel(
            "[has(self.setWeight), has(self.pause), has(self.analysis)].filter(x, x).size() == 1",
            "each canary step must set exactly one of setWeight, pause or analysis",
        )
    )

    set_weight: int | None = Field(default=None, ge=0, le=100)
    pause: Pause | None = None
    analysis: AnalysisStep | None = None


class Analysis(ApiModel):
    """Thresholds a canary must meet, measured from the pods' own /metrics."""

    model_config = api_config(
        cel(
            "has(self.minLabelledRows) == has(self.maxQualityDrop)",
            "minLabelledRows and maxQualityDrop must be set together",
        )
    )

    interval_seconds: int = Field(default=30, ge=1, description="Between background analyses.")
    min_request_count: int = Field(default=20, ge=0)
    max_error_rate_percent: str = Field(
        default="5",
        pattern=DECIMAL,
        max_length=NUMBER_LENGTH,
        json_schema_extra=at_most(100, "maxErrorRatePercent"),
        description="Largest share of the canary's prediction requests that may fail: its 5xx, "
        "plus its 4xx rate in excess of the stable's 4xx rate in the same window by more than "
        "three standard errors of the difference (bad clients hit both versions alike; a canary "
        "refusing what the stable accepts does not).",
    )
    max_p95_latency_ms: int = Field(default=500, ge=1)
    max_prediction_shift: str = Field(
        default="0.25",
        pattern=DECIMAL,
        max_length=NUMBER_LENGTH,
        json_schema_extra=at_most(1, "maxPredictionShift"),
        description="Largest Jensen-Shannon distance between canary and stable predictions.",
    )
    min_labelled_rows: int | None = Field(
        default=None,
        ge=1,
        description="Judge live quality: the labelled predictions (labels posted to /feedback, "
        "counted by the pod that answered the row) each of canary and stable need in a window; "
        "fewer make the analysis Inconclusive. Unset: live quality is reported, never judged.",
    )
    max_quality_drop: str | None = Field(
        default=None,
        pattern=DECIMAL,
        max_length=NUMBER_LENGTH,
        description="How much worse the canary's live accuracy (regressors: mean absolute "
        "error, in the label's units) may be than the stable's, in the same window.",
    )
    failure_limit: int = Field(default=1, ge=1, description="Failed analyses that abort a rollout.")
    inconclusive_limit: int = Field(
        default=10, ge=1, description="Analyses short of minRequestCount before the rollout pauses."
    )


def _weights_rising_to_100() -> list[JsonDict]:
    weights = "self.filter(s, has(s.setWeight)).map(s, s.setWeight)"
    return [
        cel(f"{weights}.isSorted()", "canary setWeight values must rise from step to step"),
        cel(
            f"{weights}.all(w, {weights}.filter(v, v == w).size() == 1)",
            "canary setWeight values must not repeat",
        ),
        cel(
            f"!self.exists(s, has(s.setWeight)) || {weights}.max() == 100",
            "the last canary setWeight must be 100",
        ),
    ]


class Canary(ApiModel):
    steps: list[CanaryStep] = Field(
        default_factory=list,
        max_length=20,
        json_schema_extra=validations(*_weights_rising_to_100()),
        description="Empty: a new version replaces the stable one at once (after its pods are ready).",
    )
    analysis: Analysis = Field(default_factory=Analysis)
    scale_down_delay_seconds: int = Field(
        default=300, ge=0, description="The old stable stays warm this long after a promotion."
    )
    progress_deadline_seconds: int = Field(
        default=600,
        ge=1,
        description="A canary step waiting this long for ready pods rolls back "
        "(ProgressDeadlineExceeded).",
    )
    allow_schema_changes: bool = Field(
        default=False,
        description="Roll out a version that needs input columns the stable did not "
        "(refused as SchemaIncompatible otherwise: production requests would lack them).",
    )


class Strategy(ApiModel):
    canary: Canary = Field(default_factory=Canary)


class ParentRef(ApiModel):
    name: str = Field(pattern=DNS_LABEL, max_length=NAME_LENGTH)
    namespace: str | None = Field(default=None, pattern=DNS_LABEL, max_length=NAME_LENGTH)
    section_name: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)


_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
HOSTNAME = rf"^(\*\.{_LABEL}\.{_LABEL}(\.{_LABEL})*|{_LABEL}(\.{_LABEL})*)$"
"""Gateway API's Hostname: RFC 1123 labels (at most 63 characters) in lower case, optionally led
by a wildcard label `*.` over at least two labels (`*.com` would take a whole top-level domain)."""
PATH_PREFIX = r"^/$|^(/[A-Za-z0-9._~-]+)+$"
"""An absolute path of whole elements, no trailing `/` (Gateway API ignores one), no `//`."""
PATH_LENGTH = 256

Hostname = Annotated[
    str,
    Field(
        min_length=1,
        max_length=OBJECT_NAME_LENGTH,
        pattern=HOSTNAME,
        json_schema_extra=validations(
            cel(
                "!self.matches('(^|[.])[0-9]+$')",
                "hostnames must be names, not IP addresses (a last label all digits, as in "
                "127.1 or 2130706433, is an address)",
            )
        ),
    ),
]


class Route(ApiModel):
    """Which requests of the gateway's listener reach this Deployment (traffic GatewayAPI)."""

    hostnames: list[Hostname] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Host headers to answer, as HTTPRoute hostnames (`*.example.com` matches "
        "any name under example.com); empty: every host the listener takes.",
    )
    path_prefix: str | None = Field(
        default=None,
        max_length=PATH_LENGTH,
        pattern=PATH_PREFIX,
        json_schema_extra=validations(
            cel(
                "!(self.contains('/./') || self.contains('/../') || self.endsWith('/.') "
                "|| self.endsWith('/..'))",
                "pathPrefix must not have a . or .. element",
            )
        ),
        description="Requests under this path reach the model, the prefix replaced by `/` "
        "(`<prefix>/predict` arrives as `/predict`). Default: `/` with hostnames, else "
        "`/serving/<namespace>/<name>`, a path no other namespace may take.",
    )


class Autoscaling(ApiModel):
    model_config = api_config(
        cel("self.maxReplicas >= self.minReplicas", "maxReplicas must be >= minReplicas")
    )

    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(ge=1)
    target_cpu_utilization_percent: int = Field(default=80, ge=1, le=100)


class NetworkPolicy(ApiModel):
    """Who may open connections to the server pods, besides those always let in."""

    enabled: bool = Field(
        default=True,
        description="false: no NetworkPolicy (one written before is deleted); the pods then "
        "take connections from anywhere the cluster's network lets through.",
    )
    allowed_namespaces: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=NAME_LENGTH)]] = (
        Field(
            default_factory=list,
            max_length=16,
            description="More namespaces whose pods may call the model (a client team, "
            "a Prometheus scraping the pods).",
        )
    )


class DeploymentSpec(ApiModel):
    model_config = api_config(
        cel(
            "has(self.modelVersion) != (has(self.model) && self.latestApproved)",
            "spec must set exactly one of modelVersion, or model with latestApproved: true",
        ),
        cel(
            "self.traffic != 'GatewayAPI' || has(self.gateway)",
            "gateway must be set when traffic is GatewayAPI",
            field_path=".gateway",
        ),
        cel(
            "!has(self.route) || self.traffic == 'GatewayAPI'",
            "route must be unset unless traffic is GatewayAPI",
            field_path=".route",
        ),
        cel(
            "self.grpcPort != self.port",
            "grpcPort must differ from port",
            field_path=".grpcPort",
        ),
    )

    model_version: str | None = Field(default=None, pattern=DNS_LABEL, max_length=NAME_LENGTH)
    model: str | None = Field(default=None, pattern=DNS_LABEL, max_length=NAME_LENGTH)
    latest_approved: bool = Field(
        default=False, description="Follow the newest approved ModelVersion of `model`."
    )
    require_approval: bool = Field(
        default=True, description="Refuse to serve a ModelVersion that is not approved."
    )
    replicas: int = Field(default=1, ge=0, le=100)
    autoscaling: Autoscaling | None = None
    resources: Resources | None = None
    image: str | None = Field(
        default=None, max_length=TEXT_LENGTH, description="Server image; default: the operator's."
    )
    port: int = Field(default=3000, ge=1024, le=65535, description="HTTP: REST, probes, metrics.")
    grpc_port: int = Field(
        default=8081,
        ge=1024,
        le=65535,
        description="The Open Inference Protocol over gRPC (KServe's port, 8081, by default).",
    )
    traffic: Literal["Replicas", "GatewayAPI"] = Field(
        default="Replicas",
        description="Replicas: weight approximated by pod counts behind one Service; "
        "GatewayAPI: an HTTPRoute with weighted backendRefs.",
    )
    gateway: ParentRef | None = None
    route: Route | None = Field(
        default=None,
        description="The HTTPRoute's hostnames and path. A route that would take requests "
        "another Deployment's route on the same listener receives is refused (RouteConflict).",
    )
    strategy: Strategy = Field(default_factory=Strategy)
    network_policy: NetworkPolicy = Field(
        default_factory=NetworkPolicy,
        description="A NetworkPolicy lets into the server pods' port only pods of this namespace, "
        "of the gateway's (traffic GatewayAPI), of the namespaces listed here and in the "
        "operator's chart, and the API server (its service and pod proxy).",
    )


class LiveQualityResult(ApiModel):
    """Live quality of canary and stable over the labels counted in the analysed window."""

    metric: Literal["Accuracy", "Mae"]
    canary: str | None = Field(
        default=None, max_length=NUMBER_LENGTH, description="Unset without labelled rows."
    )
    stable: str | None = Field(
        default=None, max_length=NUMBER_LENGTH, description="Unset without labelled rows."
    )
    canary_labelled_rows: int = Field(default=0, ge=0)
    stable_labelled_rows: int = Field(default=0, ge=0)


class AnalysisResult(ApiModel):
    result: Literal["Passed", "Failed", "Inconclusive"]
    step: int | None = Field(
        default=None, description="The analysis step measured; unset: background."
    )
    at: str = Field(json_schema_extra={"format": "date-time"})
    requests: int = 0
    error_rate_percent: str | None = Field(default=None, max_length=NUMBER_LENGTH)
    p95_latency_ms: str | None = Field(default=None, max_length=NUMBER_LENGTH)
    prediction_shift: str | None = Field(default=None, max_length=NUMBER_LENGTH)
    live_quality: LiveQualityResult | None = None
    message: str = Field(default="", max_length=MESSAGE_LENGTH)


CountersMap = Annotated[
    dict[str, float],
    Field(max_length=2048, json_schema_extra=keys_at_most(TEXT_LENGTH, "counters")),
]
"""One pod's counters: a few per status code and latency bucket, one per predicted class."""

DeploymentPhase = Literal["Pending", "Progressing", "Paused", "Healthy", "Degraded"]

HISTORY_LIMIT = 50
"""Entries a history keeps (a Deployment's, a ModelVersion's); the oldest ended ones go first."""
REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
"""As a condition's reason."""


class HistoryEntry(ApiModel):
    """One version serving in one role over one span of time: what served when, and why."""

    version: str = Field(max_length=OBJECT_NAME_LENGTH)
    role: Literal["Stable", "Canary"]
    from_: str = Field(alias="from", json_schema_extra={"format": "date-time"})
    to: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="Unset while it serves.",
    )
    reason: str = Field(
        pattern=REASON,
        max_length=NAME_LENGTH,
        description="Why it began: Initial (served without a canary, as the first version is), "
        "CanaryStarted, Retried (a rolled-back version tried again), Promoted (the canary became "
        "stable), RolledBack (back to the previous stable), Observed (serving when the record "
        "began).",
    )
    by: str = Field(
        max_length=TEXT_LENGTH,
        description="Who made it begin: for a CLI action the user who asked, as `mlkube` "
        "recorded it on the action (`unknown` when the action names nobody); `operator` for "
        "the operator's own steps (a spec change, a passed or failed analysis, a deadline).",
    )
    end_reason: str | None = Field(
        default=None,
        pattern=REASON,
        max_length=NAME_LENGTH,
        description="Why it ended: Promoted (the canary became stable), Replaced (another version "
        "took the role), RolledBack, Aborted, AnalysisFailed, ProgressDeadlineExceeded, "
        "Abandoned (the spec returned to the stable), or why the version could not be served "
        "any more (the Degraded condition's reason, e.g. ModelVersionNotFound).",
    )
    ended_by: str | None = Field(default=None, max_length=TEXT_LENGTH, description="As `by`.")


MLFLOW_ALIASES_LIMIT = 16


class MlflowAlias(ApiModel):
    """An alias this Deployment holds in MLflow's registry, as its last sync set it."""

    tracking_uri: str = Field(max_length=URI_LENGTH)
    registered_model: str = Field(max_length=TEXT_LENGTH)
    alias: str = Field(
        max_length=TEXT_LENGTH,
        description="champion_<namespace>_<deployment> (the stable version) or "
        "challenger_<namespace>_<deployment> (the canary).",
    )
    version: str = Field(max_length=NUMBER_LENGTH, description="The version in MLflow's registry.")
    credentials_secret: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)


class DeploymentStatus(StatusBase):
    phase: DeploymentPhase | None = None
    stable_version: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)
    canary_version: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)
    previous_stable_version: str | None = Field(default=None, max_length=OBJECT_NAME_LENGTH)
    scale_down_at: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When the warm previous stable is scaled down.",
    )
    current_step: int | None = Field(default=None, ge=0)
    canary_weight: int | None = Field(default=None, ge=0, le=100)
    step_started_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    analysis_failures: int = Field(default=0, ge=0)
    analysis_inconclusive: int = Field(default=0, ge=0)
    last_analysis: AnalysisResult | None = None
    analysis_baseline: dict[str, CountersMap] | None = Field(
        default=None,
        max_length=512,
        json_schema_extra=keys_at_most(TEXT_LENGTH, "analysisBaseline"),
        description="Each pod's counters at the last conclusive analysis, or when traffic first "
        "reached the canary (`canary/<pod>`, `stable/<pod>`): the next one judges only the "
        "requests since, on both sides alike. Unset until the canary's pods take traffic.",
    )
    aborted_version: str | None = Field(
        default=None,
        max_length=OBJECT_NAME_LENGTH,
        description="A version rolled back; not retried until `mlkube retry`.",
    )
    handled_action: str | None = Field(
        default=None, max_length=TEXT_LENGTH, description="Last CLI action carried out."
    )
    service_name: str | None = Field(default=None, max_length=NAME_LENGTH)
    ready_replicas: int | None = None
    history: list[HistoryEntry] | None = Field(
        default=None,
        max_length=HISTORY_LIMIT,
        description="What served when and why, oldest first (`mlkube history`); kept in status, "
        "so it survives operator restarts. At most 50 entries: the oldest ended ones go first. "
        "Unset until a version serves.",
    )
    mlflow_aliases: list[MlflowAlias] | None = Field(
        default=None,
        max_length=MLFLOW_ALIASES_LIMIT,
        description="The aliases the stable and canary versions hold in MLflow's registry "
        "(those registered there, lineage.mlflow), as last synced; condition AliasesSynced says "
        "whether MLflow is in step.",
    )


class Deployment(ApiModel):
    spec: DeploymentSpec
    status: DeploymentStatus = Field(default_factory=DeploymentStatus)
