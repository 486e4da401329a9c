"""spec.search, the pure parts: the schema's refusals, each trial's parameters from (space,
method, seed, index), ranking, the trial pods' records, and the reconciler's decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from mlkube.api.trainingjob import MAX_TRIALS, Search, TrainingJobSpec, TrainingJobStatus
from mlkube.builders.common import Owner
from mlkube.builders.training import build_trials_job
from mlkube.config import OperatorConfig
from mlkube.core.search import parse_indexes, trial_records, trials_over
from mlkube.core.training import Observation, decide
from mlkube.runtime.search import (
    first_failure,
    grid,
    parse_record,
    rank,
    trial_parameters,
    trial_uri,
    trials_uri,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def search(**fields: Any) -> Search:
    return Search.model_validate(fields)


def spec(**search_fields: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "model": "iris",
            "dataset": {"uri": "builtin:iris"},
            "estimator": {"className": "sklearn.svm.SVC"},
            "search": search_fields or {"method": "Grid", "space": {"C": {"values": [1, 2, 3]}}},
        }
    )


# -- parameters ----------------------------------------------------------------------------------

GRID = search(method="Grid", space={"kernel": {"values": ["rbf", "linear"]},
                                    "C": {"values": [0.1, 1, 10]}})  # fmt: skip


def test_a_grid_enumerates_every_combination_in_name_order_the_last_name_fastest() -> None:
    assert GRID.trial_count() == 6
    assert [trial_parameters(GRID, 0, i) for i in range(6)] == grid(GRID.space)
    assert trial_parameters(GRID, 0, 0) == {"C": 0.1, "kernel": "rbf"}
    assert trial_parameters(GRID, 0, 1) == {"C": 0.1, "kernel": "linear"}
    assert trial_parameters(GRID, 0, 5) == {"C": 10, "kernel": "linear"}


def test_a_grid_ignores_the_seed_and_refuses_an_index_outside_it() -> None:
    assert trial_parameters(GRID, 1, 3) == trial_parameters(GRID, 2, 3)
    with pytest.raises(IndexError, match="outside a search of 6 trials"):
        trial_parameters(GRID, 0, 6)


RANDOM = search(
    method="Random",
    trials=50,
    space={
        "C": {"min": "0.001", "max": "1000", "log": True},
        "max_depth": {"min": "2", "max": "9", "type": "int"},
        "gamma": {"min": "0.5", "max": "1.5"},
        "kernel": {"values": ["rbf", "poly"]},
    },
)


def test_random_trials_depend_on_seed_and_index_alone() -> None:
    first = [trial_parameters(RANDOM, 7, i) for i in range(50)]
    assert first == [trial_parameters(RANDOM, 7, i) for i in range(50)], "same seed, same trials"
    assert first[3] == trial_parameters(RANDOM, 7, 3), "a retried index tries the same values"
    assert first != [trial_parameters(RANDOM, 8, i) for i in range(50)], "another seed differs"
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 50


def test_random_trials_stay_in_their_ranges_with_their_types() -> None:
    for i in range(50):
        p = trial_parameters(RANDOM, 7, i)
        assert 0.001 <= p["C"] <= 1000  # type: ignore[operator]
        assert isinstance(p["max_depth"], int) and 2 <= p["max_depth"] <= 9
        assert 0.5 <= p["gamma"] <= 1.5  # type: ignore[operator]
        assert p["kernel"] in ("rbf", "poly")
    depths = {trial_parameters(RANDOM, 7, i)["max_depth"] for i in range(50)}
    assert depths == set(range(2, 10)), "both ends of an int range are drawn"
    small = sum(1 for i in range(50) if trial_parameters(RANDOM, 7, i)["C"] < 1)  # type: ignore[operator]
    assert 15 <= small <= 35, "log scale: half the draws below the geometric middle"


# -- the schema's refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"method": "Grid", "space": {"C": {}}}, "must set either values or min and max"),
        ({"method": "Grid", "space": {"C": {"values": [1], "min": "1", "max": "2"}}},
         "must set either values or min and max"),
        ({"method": "Grid", "space": {"C": {"values": [[1]]}}}, "must be numbers, strings"),
        ({"method": "Grid", "space": {"bad-name": {"values": [1]}}}, "hyperparameter name"),
        ({"method": "Grid", "space": {"C": {"values": [1]}}, "parallelism": 0}, "parallelism"),
        ({"method": "Grid", "space": {f"p{i}": {"values": list(range(10))} for i in range(3)}},
         f"at most {MAX_TRIALS} trials"),
        ({"method": "Random", "trials": MAX_TRIALS + 1, "space": {"C": {"values": [1]}}}, "trials"),
    ],
)  # fmt: skip
def test_a_bad_search_is_refused_naming_the_field(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        search(**fields)


def test_the_crd_refuses_what_cel_can_check_naming_the_field() -> None:
    from mlkube.api.crdgen import BY_KIND, crd

    rules = json.dumps(crd(BY_KIND["TrainingJob"]))
    for message in (
        "search.trials must be set for method Random",
        "search.trials must only be set for method Random",
        "a Grid must list values for every hyperparameter",
        "a search range's min must be less than its max",
        "a search range with log: true must have min greater than 0",
    ):
        assert message in rules, message


# -- ranking and records -------------------------------------------------------------------------


def record(index: int, value: str | None, status: str = "Succeeded") -> dict[str, Any]:
    r: dict[str, Any] = {"index": index, "status": status, "parameters": {"C": index}}
    if value is not None:
        r["value"] = value
    if status == "Failed":
        r |= {"reason": "InvalidHyperparameters", "message": f"trial {index} refused"}
    return r


def test_trials_rank_best_first_ties_to_the_lower_index_failed_last() -> None:
    trials = [record(0, "0.9"), record(1, None, "Failed"), record(2, "0.95"), record(3, "0.95")]
    assert [t["index"] for t in rank(trials, "accuracy")] == [2, 3, 0, 1]
    assert [t["index"] for t in rank(reversed(trials), "accuracy")] == [2, 3, 0, 1]
    assert [t["index"] for t in rank(trials, "rmse")] == [0, 2, 3, 1], "rmse: lower is better"


def test_every_failed_search_names_the_first_trials_reason() -> None:
    reason, message = first_failure([record(2, None, "Failed"), record(0, None, "Failed")])
    assert reason == "InvalidHyperparameters"
    assert message == "every trial failed; trial 0: trial 0 refused"


def test_a_record_that_is_not_the_trials_own_is_a_failed_trial() -> None:
    assert parse_record(json.dumps(record(4, "0.9")), 4)["status"] == "Succeeded"
    assert parse_record(json.dumps(record(4, "0.9")), 5)["reason"] == "NoResult"
    assert parse_record(b"{not json", 5)["status"] == "Failed"


def test_trials_live_under_the_namespaces_own_version() -> None:
    uri = trials_uri("s3://bucket/mlkube", "team-a", "iris", 3)
    assert uri == "s3://bucket/mlkube/team-a/iris/3/trials"
    assert trial_uri(uri, 12) == f"{uri}/trial-00012.json"
    assert trials_uri("s3://bucket/mlkube", "team-b", "iris", 3) != uri


def pod(
    index: int, result: dict[str, Any] | str, created: str = "2026-12-07T11:00:00Z"
) -> dict[str, Any]:
    message = result if isinstance(result, str) else json.dumps(result)
    return {
        "metadata": {
            "name": f"t-{index}-{created[-3:-1]}",
            "creationTimestamp": created,
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"containerStatuses": [
            {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": message}}}
        ]},
    }  # fmt: skip


def test_trial_records_come_from_the_newest_pod_of_each_index() -> None:
    transient = json.dumps({"status": "Failed", "reason": "ArtifactStoreError", "message": "x"})
    pods = [
        pod(0, transient, "2026-12-07T11:00:00Z"),
        pod(0, record(0, "0.9"), "2026-12-07T11:01:00Z"),
        pod(1, record(1, None, "Failed")),
        pod(2, transient),
    ]
    records = trial_records(pods, failed_indexes={3})
    assert [(r["index"], r["status"]) for r in records] == [
        (0, "Succeeded"), (1, "Failed"), (3, "Failed")
    ], "a transient failure the Job retries is no trial's end; a failed index is"  # fmt: skip
    assert records[0]["pod"] == "t-0-00"
    assert records[2]["reason"] == "NoResult"


def test_job_indexes_and_the_end_of_the_trials() -> None:
    assert parse_indexes("1,3-5") == {1, 3, 4, 5}
    assert parse_indexes(None) == set()
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    some_failed = {"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "FailedIndexes"}]}}  # fmt: skip
    late = {"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}}  # fmt: skip
    assert (trials_over(done), trials_over(some_failed)) == ("", "")
    assert trials_over(late) == "DeadlineExceeded"
    assert trials_over({"status": {"active": 3}}) is None


# -- decisions -----------------------------------------------------------------------------------

SEARCHING = spec()


def trials_job(*conditions: tuple[str, str], active: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "iris-trials", "annotations": {"mlkube.io/model-version": "1"}},
        "spec": {"suspend": False},
        "status": {"active": active, "conditions": [
            {"type": t, "status": "True", "reason": r} for t, r in conditions]},
    }  # fmt: skip


def look(o: Observation, status: TrainingJobStatus | None = None) -> Any:
    return decide(SEARCHING, status or TrainingJobStatus(), o, NOW, 1, "iris-train")


def test_a_search_creates_its_trials_before_the_training() -> None:
    d = look(Observation(version=1))
    assert (d.create_trials, d.create_job) == (True, False)
    assert d.status.search is not None and d.status.search.progress == "0/3"
    assert [e.reason for e in d.events] == ["TrialsCreated"]


def test_a_search_refused_before_its_trials_creates_nothing() -> None:
    d = look(Observation(version=1, forbidden="spec.dataset.uri: outside the namespace's store"))
    assert (d.create_trials, d.status.phase) == (False, "Failed")


def test_running_trials_show_progress_and_the_best_so_far() -> None:
    pods = [pod(0, record(0, "0.8")), pod(2, record(2, "0.9"))]
    d = look(Observation(version=1, trials_job=trials_job(active=1), trial_pods=pods))
    assert (d.status.phase, d.create_job) == ("Running", False)
    search_ = d.status.search
    assert search_ is not None
    assert (search_.done, search_.total, search_.progress) == (2, 3, "2/3")
    assert [t.index for t in search_.top] == [2, 0]
    assert d.status.progress == "trials 2/3 done"
    assert d.status.job_name == "iris-trials"


def test_trials_over_with_a_failed_one_train_the_winner() -> None:
    pods = [pod(0, record(0, "0.8")), pod(1, record(1, None, "Failed")), pod(2, record(2, "0.9"))]
    job = trials_job(("Complete", ""))
    d = look(Observation(version=1, trials_job=job, trial_pods=pods))
    assert d.create_job
    assert d.status.search is not None and d.status.search.failed == 1


def test_every_trial_failed_fails_the_training_with_the_first_trials_reason() -> None:
    pods = [pod(i, record(i, None, "Failed")) for i in (2, 0, 1)]
    job = trials_job(("Failed", "FailedIndexes"))
    d = look(Observation(version=1, trials_job=job, trial_pods=pods))
    assert (d.create_job, d.status.phase) == (False, "Failed")
    assert (d.events[0].reason, d.events[0].message) == (
        "InvalidHyperparameters", "every trial failed; trial 0: trial 0 refused"
    )  # fmt: skip


def test_trials_past_their_deadline_fail_the_training() -> None:
    job = trials_job(("Failed", "DeadlineExceeded"))
    d = look(Observation(version=1, trials_job=job, trial_pods=[pod(0, record(0, "0.8"))]))
    assert (d.create_job, d.status.phase) == (False, "Failed")
    assert d.events[0].reason == "DeadlineExceeded"


def test_the_winner_the_training_reports_lands_in_status() -> None:
    status = TrainingJobStatus(
        phase="Running", version=1, job_name="iris-train", observed_generation=1,
        search={"metric": "accuracy", "total": 3, "done": 3, "progress": "3/3"},
    )  # fmt: skip
    winner = {"index": 2, "parameters": {"C": 3}, "value": "0.9", "fitSeconds": "0.1"}
    result = {
        "status": "Succeeded", "version": 1, "task": "classification", "artifactUri": "s3://b/v",
        "sha256": "c" * 64, "metrics": {"accuracy": "0.9"}, "columns": [["a", "float"]],
        "search": {"winner": winner, "trialsUri": "s3://b/v/trials"}, "params": {"C": 3},
    }  # fmt: skip
    done = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
            "metadata": {"name": "iris-train"}, "spec": {}}  # fmt: skip
    finished = {
        "metadata": {"creationTimestamp": "2026-12-07T11:00:00Z"},
        "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": {
            "exitCode": 0, "message": json.dumps(result)}}}]},
    }  # fmt: skip
    d = decide(SEARCHING, status, Observation(version=1, job=done, pods=[finished]), NOW, 1,
               "iris-train")  # fmt: skip
    assert d.status.phase == "Succeeded"
    assert d.status.search is not None and d.status.search.winner is not None
    assert (d.status.search.winner.index, d.status.search.winner.parameters) == (2, {"C": "3"})
    assert d.register is not None and d.register["params"] == {"C": 3}


def test_the_trials_job_is_indexed_with_a_retry_per_index() -> None:
    owner = Owner("TrainingJob", "iris", "team-a", "uid-1")
    job = build_trials_job(owner, spec(method="Grid", parallelism=8,
                                       space={"C": {"values": [1, 2, 3]}}), 4, OperatorConfig())  # fmt: skip
    assert job["metadata"]["name"] == "iris-trials"
    s = job["spec"]
    assert (s["completionMode"], s["completions"], s["parallelism"]) == ("Indexed", 3, 3)
    assert s["backoffLimitPerIndex"] == 0
    assert s["podFailurePolicy"]["rules"][0]["action"] == "FailIndex"
    container = s["template"]["spec"]["containers"][0]
    assert container["args"][-1] == "--trial" and "--version" in container["args"]
    assert not any(e["name"].startswith("MLFLOW") for e in container["env"])


# -- the CLI ---------------------------------------------------------------------------------------


def searched(**search_fields: Any) -> dict[str, Any]:
    search_status = {"metric": "accuracy", "total": 6, "done": 4, "failed": 1,
                     "progress": "4/6", **search_fields}  # fmt: skip
    return {"metadata": {"name": "grid"}, "status": {"phase": "Running", "search": search_status}}


def test_status_shows_a_search_as_a_bar_of_its_trials() -> None:
    from mlkube.cli import search_progress

    top = [{"index": 2, "status": "Succeeded", "value": "0.95"}]
    line = search_progress(searched(top=top))
    assert line is not None
    assert line.startswith("grid [###############xxxxx..........] 4/6 trials, 1 failed")
    assert "best so far: trial 2 accuracy 0.95" in line and line.endswith("Running")
    assert search_progress({"metadata": {"name": "plain"}, "status": {}}) is None


def test_trials_prints_every_reported_trial_best_first_the_winner_marked() -> None:
    from mlkube.cli import trials_table

    job = searched(winner={"index": 2, "value": "0.95"})
    records = [record(0, "0.9"), record(1, None, "Failed"), record(2, "0.95")]
    lines = trials_table(job, records).splitlines()
    assert lines[0].split() == ["RANK", "TRIAL", "STATUS", "ACCURACY", "FIT", "S", "PARAMETERS",
                                "POD", "/", "REASON"]  # fmt: skip
    assert [line.split()[:4] for line in lines[1:]] == [
        ["1*", "2", "Succeeded", "0.95"], ["2", "0", "Succeeded", "0.9"], ["3", "1", "Failed", "-"]
    ]  # fmt: skip
    assert "InvalidHyperparameters: trial 1 refused" in lines[3]
    kept = trials_table(searched(top=[{"index": 5, "status": "Succeeded", "value": "0.9"}]))
    assert kept.splitlines()[1].split()[:2] == ["1", "5"], "without pods: status's top trials"


def test_the_trial_pods_spread_over_nodes_where_there_are_several() -> None:
    owner = Owner("TrainingJob", "iris", "team-a", "uid-1")
    pod_spec = build_trials_job(owner, spec(), 1, OperatorConfig())["spec"]["template"]["spec"]
    (spread,) = pod_spec["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == {"mlkube.io/trials": "iris"}


def test_a_finished_search_cleans_up_its_trials_job_after_the_ttl() -> None:
    ttl = spec().model_copy(update={"ttl_seconds_after_finished": 0})
    failed = TrainingJobStatus(phase="Failed", version=1, job_name="iris-trials",
                               completion_time="2026-12-07T11:00:00Z", observed_generation=1)  # fmt: skip
    d = decide(ttl, failed, Observation(version=1, trials_job=trials_job()), NOW, 1, "iris-train")
    assert d.delete_job
