"""The CLI's pure parts: printer columns, the rollout picture, actions as annotations."""

from __future__ import annotations

from datetime import UTC, datetime

from mlkube.api.crdgen import KINDS
from mlkube.cli import (
    approval_refused,
    batch_progress,
    canary_progress,
    gitops_rollback_hint,
    headers_for,
    history_table,
    json_path,
    live_quality,
    parser,
    progress_bar,
    rows_for,
    serving_summary,
    table,
)
from mlkube.controller.errors import Forbidden
from mlkube.controller.kube import context_namespace
from mlkube.core.actions import ACTION_ANNOTATION, action_value, managed_by_gitops, pending_action

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DEPLOYMENT = {
    "metadata": {
        "name": "iris",
        "namespace": "team-a",
        "creationTimestamp": "2026-11-27T10:30:00Z",
    },
    "spec": {
        "strategy": {
            "canary": {
                "steps": [{"setWeight": 25}, {"pause": {}}, {"analysis": {}}, {"setWeight": 100}]
            }
        }
    },
    "status": {
        "phase": "Paused",
        "stableVersion": "iris-v1",
        "canaryVersion": "iris-v2",
        "canaryWeight": 25,
        "currentStep": 1,
        "previousStableVersion": "iris-v0",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Serving",
                "message": "iris-v1 is serving",
            }
        ],
    },
}


def test_json_path_follows_fields_and_condition_filters() -> None:
    assert json_path(DEPLOYMENT, ".status.stableVersion") == "iris-v1"
    assert json_path(DEPLOYMENT, '.status.conditions[?(@.type=="Ready")].status') == "True"
    assert json_path(DEPLOYMENT, '.status.conditions[?(@.type=="Degraded")].status') is None
    assert json_path(DEPLOYMENT, ".status.lastAnalysis.result") is None


def test_rows_use_the_crds_printer_columns() -> None:
    kind = next(k for k in KINDS if k.kind == "Deployment")
    assert headers_for(kind, False) == [
        "NAME",
        "READY",
        "PHASE",
        "STABLE",
        "CANARY",
        "WEIGHT",
        "STEP",
        "AGE",
    ]
    assert rows_for(kind, [DEPLOYMENT], NOW, False) == [
        ["iris", "True", "Paused", "iris-v1", "iris-v2", "25", "1", "1h"]
    ]
    assert rows_for(kind, [DEPLOYMENT], NOW, True)[0][0] == "team-a"


def test_table_aligns_columns() -> None:
    assert table(["A", "BB"], [["xxx", "y"]]).splitlines() == ["A     BB", "xxx   y"]


def test_canary_progress_marks_done_current_and_pending_steps() -> None:
    picture = canary_progress(DEPLOYMENT).splitlines()
    assert picture[1] == "weight [#####...............] 25%"
    assert picture[2:6] == [
        " x 0: setWeight 25",
        " > 1: pause until `mlkube promote`",
        "   2: analysis",
        "   3: setWeight 100",
    ]
    assert "Ready=True Serving" in picture[-1]


def test_actions_are_carried_out_once() -> None:
    value = action_value("promote", NOW)
    assert value == "promote@2026-11-27T12:00:00Z"
    assert pending_action({ACTION_ANNOTATION: value}, None) == ("promote", value)
    assert pending_action({ACTION_ANNOTATION: value}, value) is None
    assert pending_action({ACTION_ANNOTATION: "explode@now"}, None) is None
    assert pending_action({}, None) is None


def test_rollback_prints_the_git_change_only_for_gitops_objects() -> None:
    assert gitops_rollback_hint(DEPLOYMENT) is None
    argo = {
        **DEPLOYMENT,
        "metadata": {
            "annotations": {
                "argocd.argoproj.io/tracking-id": "app:mlkube.io/Deployment:team-a/iris"
            }
        },
    }
    assert managed_by_gitops(argo["metadata"]) == "Argo CD"
    hint = gitops_rollback_hint(argo)
    assert hint is not None
    assert "modelVersion: iris-v0" in hint
    flux = {"labels": {"kustomize.toolkit.fluxcd.io/name": "apps"}}
    assert managed_by_gitops(flux) == "Flux"


def test_live_quality_shows_realised_beside_estimated_with_outcomes_and_slices() -> None:
    monitor = {
        "metadata": {"name": "iris-quality"},
        "spec": {"deployment": "iris"},
        "status": {
            "performance": {
                "modelVersion": "iris-v2",
                "verdict": "Degraded",
                "metric": "Accuracy",
                "value": "0.7",
                "estimated": "0.95",
                "offline": "0.97",
                "rows": 1000,
                "labelledRows": 900,
                "labelledShare": "0.9",
                "unknownIds": 4,
                "outcomes": {"revenue": "1234.5"},
                "slices": [{"value": "web", "rows": 300, "metric": "0.55"}],
                "worstSliceGap": "0.15",
            }
        },
    }
    text = live_quality(monitor)
    assert text is not None
    lines = text.splitlines()
    assert lines[0].startswith("live quality (iris-quality, iris-v2): Degraded")
    assert "Accuracy 0.7   estimated 0.95   offline 0.97" in lines[0]
    assert "labelled 900 of 1000 rows (0.9 of those due), 4 labels for unknown ids" in lines[1]
    assert "outcomes revenue 1234.5" in text
    assert "slice web: 0.55 (300 rows)" in text
    assert "worst slice gap 0.15" in text
    assert live_quality({"metadata": {"name": "m"}, "status": {}}) is None


HISTORY = [
    {"version": "iris-v1", "role": "Stable", "from": "2026-11-27T10:30:00Z",
     "to": "2026-11-27T11:00:00Z", "reason": "Initial", "by": "operator",
     "endReason": "Replaced", "endedBy": "alice@example.com"},
    {"version": "iris-v2", "role": "Stable", "from": "2026-11-27T11:00:00Z",
     "reason": "Promoted", "by": "alice@example.com"},
]  # fmt: skip


def test_history_shows_each_span_with_why_and_who_oldest_first() -> None:
    lines = history_table(HISTORY, NOW).splitlines()
    assert lines[0].split() == [
        "VERSION", "ROLE", "FROM", "TO", "FOR", "REASON", "BY", "ENDED", "ENDED", "BY",
    ]  # fmt: skip
    assert lines[1].split() == [
        "iris-v1", "Stable", "2026-11-27T10:30:00Z", "2026-11-27T11:00:00Z", "30m", "Initial",
        "operator", "Replaced", "alice@example.com",
    ]  # fmt: skip
    assert lines[2].split() == [
        "iris-v2", "Stable", "2026-11-27T11:00:00Z", "serving", "1h", "Promoted",
        "alice@example.com",
    ]  # fmt: skip
    by_deployment = history_table([{**HISTORY[1], "deployment": "prod"}], NOW, deployment=True)
    assert by_deployment.splitlines()[0].startswith("DEPLOYMENT")
    assert by_deployment.splitlines()[1].startswith("prod")


def test_a_model_versions_serving_roles_and_aliases_in_one_line() -> None:
    mv = {
        "metadata": {"name": "iris-v2"},
        "status": {
            "servingIn": [
                {"deployment": "prod", "role": "Stable", "since": "2026-11-27T11:00:00Z"},
                {"deployment": "eu", "role": "Previous"},
            ],
            "aliases": [{"name": "champion", "deployment": "prod"}],
        },
    }
    assert serving_summary(mv) == (
        "iris-v2: Stable in prod (champion) since 2026-11-27T11:00:00Z; Previous in eu"
    )
    assert serving_summary({"metadata": {"name": "iris-v3"}}) == "iris-v3: not serving"


def test_model_versions_list_their_serving_role_beside_the_persons_stage() -> None:
    kind = next(k for k in KINDS if k.kind == "ModelVersion")
    mv = {
        "metadata": {"name": "iris-v2", "creationTimestamp": "2026-11-27T10:30:00Z"},
        "spec": {"model": "iris", "version": 2, "stage": "None"},
        "status": {"approved": True, "role": "Stable,Canary"},
    }
    headers = headers_for(kind, False)
    row = dict(zip(headers, rows_for(kind, [mv], NOW, False)[0], strict=True))
    assert (row["ROLE"], row["STAGE"]) == ("Stable,Canary", "None")


def test_history_takes_a_deployment_or_a_model_version() -> None:
    assert parser().parse_args(["history", "iris"]).name == "iris"
    assert parser().parse_args(["-n", "a", "history", "mlmv/iris-v2"]).name == "mlmv/iris-v2"


def test_a_batch_prediction_shows_its_shards_as_a_bar_and_names_the_failed_ones() -> None:
    """The status as the operator's own decision wrote it (the Argo CD testdata of a run whose
    shard 2 failed), one line in the list and in detail with `mlkube status NAME`."""
    import yaml

    from tests.unit.test_argocd import CUSTOMIZATIONS

    run = yaml.safe_load(
        (CUSTOMIZATIONS / "BatchPrediction/testdata/degraded_shard_failed.yaml").read_text()
    )
    line = batch_progress(run)
    assert line == (
        "scores [######################xxxxxxxx] 3/4 shards, 1 failed, 2,500,000/3,500,000 rows"
        "   Failed (iris-v3)"
    )
    detail = batch_progress(run, detail=True).splitlines()
    assert detail[1].startswith("  shard 2: InputSchemaMismatch: s3://models/prod/ml/scoring/")
    assert detail[2] == "  manifest s3://models/prod/ml/scores/2026-11/_manifest.json"
    assert "Failed=True ShardsFailed: 1 of 4 shards failed" in detail[-1]
    kind = next(k for k in KINDS if k.kind == "BatchPrediction")
    assert rows_for(kind, [run], NOW, False)[0][:7] == [
        "scores", "Failed", "iris-v3", "4", "3", "1", "2500000",
    ]  # fmt: skip


def test_the_progress_bar_never_rounds_a_failure_away() -> None:
    assert progress_bar(0, 0, 0, width=10) == "[..........]"
    assert progress_bar(5, 0, 10, width=10) == "[#####.....]"
    assert progress_bar(998, 1, 1000, width=10) == "[#########x]"
    assert progress_bar(10, 0, 10, width=10) == "[##########]"


CONTEXTS = [
    {"name": "alice", "context": {"cluster": "c", "user": "alice", "namespace": "fe16-a"}},
    {"name": "admin", "context": {"cluster": "c", "user": "admin"}},
]


def test_without_n_the_namespace_is_the_kubeconfig_contexts_as_kubectl_picks_it() -> None:
    assert parser().parse_args(["approve", "iris-v9"]).namespace is None  # resolved on connect
    assert context_namespace(CONTEXTS, CONTEXTS[0], None) == "fe16-a"  # the current context
    assert context_namespace(CONTEXTS, CONTEXTS[1], "alice") == "fe16-a"  # --context
    assert context_namespace(CONTEXTS, CONTEXTS[0], "admin") == "default"  # names none
    assert context_namespace(CONTEXTS, None, None) == "default"
    assert parser().parse_args(["-n", "team-b", "approve", "v"]).namespace == "team-b"


def test_the_approver_role_hint_answers_only_the_approval_policys_refusal() -> None:
    policy = Forbidden(
        403,
        "Forbidden",
        'modelversions.mlkube.io "iris-v9" is forbidden: ValidatingAdmissionPolicy'
        " 'mlkube-approval' with binding 'mlkube-approval' denied request: alice may not"
        " approve or reject ModelVersion iris-v9 in fe16-a: that takes the verb approve on"
        " modelversions.mlkube.io, which a platform team grants with a RoleBinding to the"
        " ClusterRole team-a-approver",
    )
    hinted = approval_refused(policy, "iris-v9", "fe16-a", "alice")
    assert "--clusterrole=team-a-approver --user=alice" in hinted, "the release's role"
    rbac = Forbidden(
        403,
        "Forbidden",
        'modelversions.mlkube.io "iris-v9" is forbidden: User "alice" cannot patch resource'
        ' "modelversions" in API group "mlkube.io" in the namespace "default"',
    )
    plain = approval_refused(rbac, "iris-v9", "default", "alice")
    assert plain == f"mlkube: cannot record a decision on modelversion iris-v9: {rbac.message}"
