"""MLflow's aliases in step with a Deployment (core.aliases) and the Job that sets them
(builders.tracking): which aliases the stable and canary versions should hold, the next sync to
run, the AliasesSynced condition, the Job's manifest."""

from __future__ import annotations

from mlkube.api.common import Condition
from mlkube.api.deployment import MLFLOW_ALIASES_LIMIT, DeploymentStatus, MlflowAlias
from mlkube.api.modelversion import MlflowRun
from mlkube.builders.common import Owner
from mlkube.builders.tracking import DIGEST_ANNOTATION, alias_job_name, build_alias_job
from mlkube.config import OperatorConfig
from mlkube.core.aliases import alias_name, next_sync, synced_condition, wanted

URI = "http://mlflow:5000"
NS, DEPLOYMENT = "team-a", "iris"
CHAMPION, CHALLENGER = "champion_team-a_iris", "challenger_team-a_iris"


def run(
    version: str | None, model: str | None = "iris", secret: str | None = "mlflow"
) -> MlflowRun:
    return MlflowRun(
        tracking_uri=URI, experiment_id="1", run_id=f"run{version}", registered_model=model,
        registered_version=version, credentials_secret=secret,
    )  # fmt: skip


def alias(
    name: str, version: str, model: str = "iris", secret: str | None = "mlflow"
) -> MlflowAlias:
    return MlflowAlias(
        tracking_uri=URI, registered_model=model, alias=name, version=version,
        credentials_secret=secret,
    )  # fmt: skip


RUNS = {"iris-v1": run("1"), "iris-v2": run("2")}
STABLE_V1 = DeploymentStatus(stable_version="iris-v1")
CANARY_V2 = DeploymentStatus(stable_version="iris-v1", canary_version="iris-v2")
PROMOTED_V2 = DeploymentStatus(stable_version="iris-v2", previous_stable_version="iris-v1")


def test_an_alias_names_its_role_namespace_and_deployment() -> None:
    assert alias_name("champion", "team-a", "iris") == "champion_team-a_iris"
    # `_` is in no Kubernetes name: (team, a-iris) cannot make team-a/iris's alias
    assert alias_name("champion", "team", "a-iris") != alias_name("champion", "team-a", "iris")


def test_the_stable_holds_champion_and_the_canary_challenger() -> None:
    assert wanted(NS, DEPLOYMENT, STABLE_V1, RUNS) == [alias(CHAMPION, "1")]
    assert wanted(NS, DEPLOYMENT, CANARY_V2, RUNS) == [alias(CHAMPION, "1"), alias(CHALLENGER, "2")]
    assert wanted(NS, DEPLOYMENT, PROMOTED_V2, RUNS) == [alias(CHAMPION, "2")], (
        "a warm previous stable holds no alias"
    )


def test_a_version_not_registered_in_mlflow_holds_no_alias() -> None:
    runs = {"iris-v1": run(None, model=None), "iris-v2": run("2")}
    assert wanted(NS, DEPLOYMENT, CANARY_V2, runs) == [alias(CHALLENGER, "2")]
    assert wanted(NS, DEPLOYMENT, CANARY_V2, {}) == [], "untracked, or its ModelVersion gone"


def test_a_first_sync_sets_the_champion_and_deletes_the_other_name() -> None:
    sync = next_sync(NS, DEPLOYMENT, wanted(NS, DEPLOYMENT, STABLE_V1, RUNS), [])
    assert sync is not None
    assert (sync.tracking_uri, sync.registered_model, sync.credentials_secret) == (
        URI, "iris", "mlflow"
    )  # fmt: skip
    assert (sync.set, sync.delete) == ({CHAMPION: "1"}, [CHALLENGER])
    assert sync.synced == [alias(CHAMPION, "1")]


def test_in_step_nothing_to_do_and_a_renamed_secret_alone_needs_no_job() -> None:
    synced = [alias(CHAMPION, "1")]
    assert next_sync(NS, DEPLOYMENT, wanted(NS, DEPLOYMENT, STABLE_V1, RUNS), synced) is None
    renamed = {"iris-v1": run("1", secret="mlflow-rotated")}
    assert next_sync(NS, DEPLOYMENT, wanted(NS, DEPLOYMENT, STABLE_V1, renamed), synced) is None


def test_a_canary_sets_challenger_and_its_promotion_moves_champion_and_drops_challenger() -> None:
    canary = next_sync(
        NS, DEPLOYMENT, wanted(NS, DEPLOYMENT, CANARY_V2, RUNS), [alias(CHAMPION, "1")]
    )
    assert canary is not None
    assert (canary.set, canary.delete) == ({CHAMPION: "1", CHALLENGER: "2"}, [])
    promoted = next_sync(NS, DEPLOYMENT, wanted(NS, DEPLOYMENT, PROMOTED_V2, RUNS), canary.synced)
    assert promoted is not None
    # MLflow moves champion from version 1 to 2 in one request
    assert (promoted.set, promoted.delete) == ({CHAMPION: "2"}, [CHALLENGER])
    assert promoted.synced == [alias(CHAMPION, "2")]
    assert promoted.digest() != canary.digest(), "other work: the running Job is replaced"


def test_aliases_in_a_registered_model_no_longer_served_are_cleaned_up_after_those_serving() -> (
    None
):
    runs = {"iris-v1": run("1"), "iris-v2": run("1", model="iris-new")}
    synced = [alias(CHAMPION, "1")]
    want = wanted(NS, DEPLOYMENT, PROMOTED_V2, runs)
    first = next_sync(NS, DEPLOYMENT, want, synced)
    assert first is not None
    assert (first.registered_model, first.set, first.delete) == (
        "iris-new",
        {CHAMPION: "1"},
        [CHALLENGER],
    )
    assert first.synced == [alias(CHAMPION, "1", model="iris-new"), alias(CHAMPION, "1")]
    then = next_sync(NS, DEPLOYMENT, want, first.synced)
    assert then is not None
    assert (then.registered_model, then.set, then.delete) == ("iris", {}, [CHAMPION, CHALLENGER])
    assert then.credentials_secret == "mlflow", "the credentials it was set with"
    assert then.synced == [alias(CHAMPION, "1", model="iris-new")]
    assert next_sync(NS, DEPLOYMENT, want, then.synced) is None


def test_the_record_stays_bounded_when_clean_ups_keep_failing() -> None:
    stale = [alias(CHAMPION, "1", model=f"old-{i}") for i in range(MLFLOW_ALIASES_LIMIT)]
    sync = next_sync(NS, DEPLOYMENT, wanted(NS, DEPLOYMENT, STABLE_V1, RUNS), stale)
    assert sync is not None and sync.registered_model == "iris", "what serves goes first"
    assert len(sync.synced) == MLFLOW_ALIASES_LIMIT
    assert sync.synced[0] == alias(CHAMPION, "1")


def previous(status: str, reason: str, message: str) -> Condition:
    return Condition(
        type="AliasesSynced", status=status, reason=reason, message=message,
        last_transition_time="2026-01-01T00:00:00Z",
    )  # fmt: skip


def test_the_condition_says_syncing_synced_or_why_it_failed() -> None:
    sync = next_sync(NS, DEPLOYMENT, wanted(NS, DEPLOYMENT, STABLE_V1, RUNS), [])
    assert sync is not None
    assert synced_condition(None, [], None, None) is None, "never had an alias: no condition"
    assert synced_condition(sync, [], None, None) == (
        "Unknown", "Syncing", f"{CHAMPION}=1, deleting {CHALLENGER} in iris at {URI}",
    )  # fmt: skip
    failed = synced_condition(sync, [], ("TrackingUnavailable", "cannot connect"), None)
    assert failed is not None
    assert failed[:2] == ("False", "TrackingUnavailable")
    assert failed[2].endswith(f"in iris at {URI}: cannot connect")
    retrying = synced_condition(sync, [], None, previous(*failed))
    assert retrying == failed, "a retry of the same work keeps the failure"
    assert synced_condition(None, sync.synced, None, previous(*failed)) == (
        "True", "Synced", f"models:/iris@{CHAMPION} is 1",
    )  # fmt: skip
    other = next_sync(NS, DEPLOYMENT, wanted(NS, DEPLOYMENT, CANARY_V2, RUNS), [])
    assert other is not None
    fresh = synced_condition(other, [], None, previous(*failed))
    assert fresh is not None and fresh[:2] == ("Unknown", "Syncing"), "new work, not the failure"


def test_the_job_runs_in_the_deployments_namespace_with_its_credentials_and_no_store() -> None:
    sync = next_sync(NS, DEPLOYMENT, wanted(NS, DEPLOYMENT, CANARY_V2, RUNS), [])
    assert sync is not None
    owner = Owner(kind="Deployment", name=DEPLOYMENT, namespace=NS, uid="u1")
    config = OperatorConfig(artifact_pvc="mlkube-artifacts", s3_secret="s3")
    job = build_alias_job(owner, sync, config)
    meta = job["metadata"]
    assert (meta["name"], meta["namespace"]) == (alias_job_name(DEPLOYMENT), NS)
    assert meta["ownerReferences"][0]["uid"] == "u1"
    assert meta["annotations"] == {DIGEST_ANNOTATION: sync.digest()}
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 120)
    assert 0 < spec["ttlSecondsAfterFinished"] <= 600
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert [v["name"] for v in pod["volumes"]] == ["tmp"], "the artifact store is not mounted"
    [container] = pod["containers"]
    assert container["args"] == [
        "mlflow-aliases", "--tracking-uri", URI, "--registered-model", "iris",
        "--set", f"{CHALLENGER}=2", "--set", f"{CHAMPION}=1",
    ]  # fmt: skip
    assert container["envFrom"] == [], "no store credentials"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs == {
        "MLFLOW_TRACKING_USERNAME": {"name": "mlflow", "key": "username", "optional": True},
        "MLFLOW_TRACKING_PASSWORD": {"name": "mlflow", "key": "password", "optional": True},
        "MLFLOW_TRACKING_TOKEN": {"name": "mlflow", "key": "token", "optional": True},
    }
    assert not any(e["name"] == "MLKUBE_ARTIFACT_ROOT" for e in container["env"])
