"""BatchPrediction on the real cluster, the operator in-process, every step a real pod: shards
of a prefix of Parquet and CSV files in the namespace's store, one of them deliberately bad; a
shard's pod killed mid-run and retried without duplicating its rows; the operator restarted
mid-run; and what another namespace cannot reach (issue 17 item 6)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from tests.batch_store import STORE, read_output, wait_phase, write_inputs
from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import (
    GROUP,
    VERSION,
    condition,
    create,
    eventually,
    get,
    start_operator,
    status_of,
)
from tests.loop import train

pytestmark = pytest.mark.usefixtures("crds")

MODEL_READY = 240


def batch(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BatchPrediction",
        "metadata": {"name": name},
        "spec": {"model": "iris", "latestApproved": True, **spec},
    }


def pods_by_index(kube: KubeCluster, ns: str, job: str) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {}
    for pod in kube.core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items:
        index = int(pod.metadata.labels["batch.kubernetes.io/job-completion-index"])
        found.setdefault(index, []).append(pod)
    return found


def jobs_of(kube: KubeCluster, ns: str, name: str) -> dict[str, str]:
    items = kube.batch.list_namespaced_job(
        ns, label_selector=f"mlkube.io/batchprediction={name}"
    ).items
    return {j.metadata.name: j.metadata.uid for j in items}


def events_for(kube: KubeCluster, ns: str, name: str) -> list[str]:
    items = kube.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [e.reason for e in items]


@pytest.fixture(scope="module")
def trained(
    kube_cluster: KubeCluster, operator_namespace: str, operator: dict[str, KopfRunner]
) -> str:
    """iris-v1, trained, approved by policy and verified (its namespace's claim then exists)."""
    train(kube_cluster, operator_namespace, "iris-1")
    eventually(
        lambda: condition(status_of(kube_cluster, operator_namespace, "modelversions", "iris-v1"),
                          "Ready").get("status") == "True",
        MODEL_READY,
        "iris-v1 to be verified",
    )  # fmt: skip
    return "iris-v1"


@pytest.mark.timeout(600)
def test_a_bad_shard_fails_alone_the_others_output_is_complete_and_it_is_named(
    kube_cluster: KubeCluster, operator_namespace: str, runtime_image: str, trained: str
) -> None:
    kube, ns = kube_cluster, operator_namespace
    source, output = f"{STORE}/{ns}/scoring/", f"{STORE}/{ns}/scores/"
    # b.csv holds rows 60-99; its row 27 (row 87 of the input, shard 2 of 40-row shards) is bad
    assert write_inputs(kube, ns, runtime_image, source, bad_row=27) == 150
    create(kube, ns, batch(
        "scores", input={"uri": source}, output={"uri": output, "idColumn": "id"},
        rowsPerShard=40, parallelism=2, backoffLimitPerIndex=1,
    ))  # fmt: skip
    status = wait_phase(kube, ns, "scores")

    assert (status["phase"], status["modelVersion"]) == ("Failed", "iris-v1")
    assert status["shards"] == {"total": 4, "succeeded": 3, "failed": 1}
    assert (status["rows"], status["rowsScored"]) == (150, 110)
    bad = f"{source}b.csv: column 'petal_width_cm' must be float, got string 'wide' in row 27"
    assert status["failedShards"] == [{"shard": 2, "reason": "InputSchemaMismatch", "message": bad}]
    failed = condition(status, "Failed")
    assert failed["reason"] == "ShardsFailed"
    assert failed["message"].startswith(
        "1 of 4 shards failed (the other 3 shards' parts are complete): shard 2: "
    )
    assert status["manifestUri"] == f"{output}_manifest.json"
    pods = pods_by_index(kube, ns, "scores-shards")
    assert len(pods[2]) == 1, "a schema error is not retried: FailIndex on the first attempt"
    assert all(len(pods[i]) == 1 for i in (0, 1, 3)), "the good shards never restarted"
    assert events_for(kube, ns, "scores").count("ShardFailed") == 1

    out = read_output(kube, ns, runtime_image, output)
    assert out["parts"] == ["part-00000.parquet", "part-00001.parquet", "part-00003.parquet"]
    assert (out["rows"], out["uniqueIds"]) == (110, 110)
    assert out["columns"] == ["id", "prediction", "probability_0", "probability_1",
                              "probability_2"]  # fmt: skip
    manifest = out["manifest"]
    assert (manifest["succeeded"], manifest["failed"], manifest["rowsOut"]) == (3, 1, 110)
    assert manifest["shards"][2]["message"] == bad
    assert (manifest["modelVersion"], len(manifest["sha256"])) == ("iris-v1", 64)

    # deleting it takes its Jobs along, never its output
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "batchpredictions", "scores")
    eventually(lambda: not jobs_of(kube, ns, "scores"), 60, "the Jobs to be garbage-collected")
    assert read_output(kube, ns, runtime_image, output)["rows"] == 110

    # applied again, the same YAML is a new run: refused, naming the earlier run as such; and an
    # id column no file holds is refused by the plan, before any shard starts
    eventually(lambda: get(kube, ns, "batchpredictions", "scores") is None, 60, "it to be gone")
    create(kube, ns, batch(
        "scores", input={"uri": source}, output={"uri": output, "idColumn": "id"},
        rowsPerShard=40, parallelism=2, backoffLimitPerIndex=1,
    ))  # fmt: skip
    create(kube, ns, batch(
        "no-id", input={"uri": source},
        output={"uri": f"{STORE}/{ns}/no-id/", "idColumn": "customer_id"},
    ))  # fmt: skip
    again = condition(wait_phase(kube, ns, "scores", timeout=60), "Failed")
    assert again["reason"] == "OutputInUse"
    assert f"holds the output of an earlier run of scores (run {manifest['runId']}, since " \
        "deleted), which finished (_manifest.json is there)" in again["message"]  # fmt: skip
    no_id = condition(wait_phase(kube, ns, "no-id", timeout=60), "Failed")
    assert (no_id["reason"], no_id["message"]) == (
        "InputSchemaMismatch",
        f"{source}a.parquet: spec.output.idColumn 'customer_id' is not in the file (its columns: "
        "id, sepal_length_cm, sepal_width_cm, petal_length_cm, petal_width_cm)",
    )
    assert list(jobs_of(kube, ns, "no-id")) == ["no-id-plan"], "no shard ran"


@pytest.mark.timeout(900)
def test_a_killed_shard_is_retried_without_duplicates_across_an_operator_restart(
    kube_cluster: KubeCluster,
    operator_namespace: str,
    runtime_image: str,
    trained: str,
    operator: dict[str, KopfRunner],
) -> None:
    kube, ns = kube_cluster, operator_namespace
    source, output = f"{STORE}/{ns}/scoring-big/", f"{STORE}/{ns}/scores-big/"
    rows = write_inputs(kube, ns, runtime_image, source, repeat=1000)  # 150,000 rows
    create(kube, ns, batch(
        "big", input={"uri": source}, output={"uri": output, "idColumn": "id"},
        rowsPerShard=30000, parallelism=1, batchSize=2000,
    ))  # fmt: skip

    # shard 0's first pod is killed while it runs: the Job controller starts the index again
    # (an eviction would not do: the worker, PID 1 without a SIGTERM handler, finishes its shard
    # within the grace period; one killed at its end is a DisruptionTarget, ignored)
    first = eventually(
        lambda: [
            p for p in pods_by_index(kube, ns, "big-shards").get(0, [])
            if p.status.phase == "Running"
        ],
        240,
        "shard 0's pod to run",
        interval=0.2,
    )  # fmt: skip
    kube.core.delete_namespaced_pod(
        first[0].metadata.name, ns, body=client.V1DeleteOptions(grace_period_seconds=0)
    )
    # the operator stops mid-run; the shards go on without it
    operator["runner"].__exit__(None, None, None)
    seen = jobs_of(kube, ns, "big")
    before = status_of(kube, ns, "batchpredictions", "big")
    assert before["phase"] == "Running", before
    time.sleep(20)
    operator["runner"] = start_operator(ns, runtime_image, kube.kubeconfig)

    status = wait_phase(kube, ns, "big", timeout=600)
    assert status["phase"] == "Succeeded", status
    assert status["shards"] == {"total": 5, "succeeded": 5, "failed": 0}
    assert status["rowsScored"] == rows == 150_000
    after = jobs_of(kube, ns, "big")
    assert set(after) == {"big-plan", "big-shards", "big-manifest"}, "no Job made twice"
    assert after["big-shards"] == seen["big-shards"], "the same shards Job across the restart"
    reasons = events_for(kube, ns, "big")
    assert (reasons.count("Planning"), reasons.count("Planned")) == (1, 1), reasons

    out = read_output(kube, ns, runtime_image, output)
    assert out["parts"] == [f"part-{i:05d}.parquet" for i in range(5)]
    assert (out["rows"], out["uniqueIds"]) == (150_000, 150_000), "every row exactly once"
    assert not [n for n in out["names"] if n.endswith(".tmp")]
    manifest = out["manifest"]
    assert manifest["shards"][0]["attempt"] == 2, "the retry is on the record"
    job = kube.batch.read_namespaced_job("big-shards", ns)
    assert (job.status.failed, job.status.failed_indexes) == (1, ""), "one retry spent, of 2"
    assert [s["rowsOut"] for s in manifest["shards"]] == [30000] * 5


@pytest.fixture
def other_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """Another team's namespace, with a ModelVersion of its own (no operator watches it)."""
    name = f"mlkube-other-{uuid.uuid4().hex[:6]}"
    kube_cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    create(kube_cluster, name, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion",
        "metadata": {"name": "secret-v1"},
        "spec": {
            "model": "secret", "version": 1, "task": "classification",
            "artifact": {"uri": f"{STORE}/{name}/secret/1", "sha256": "b" * 64},
            "framework": {"version": "1.9.1"},
            "inputSchema": [{"name": "x", "type": "float"}],
        },
    })  # fmt: skip
    yield name
    kube_cluster.core.delete_namespace(name)


@pytest.mark.timeout(300)
def test_another_namespaces_store_and_model_versions_are_out_of_reach(
    kube_cluster: KubeCluster, operator_namespace: str, other_namespace: str, trained: str
) -> None:
    kube, ns, other = kube_cluster, operator_namespace, other_namespace
    mine = f"{STORE}/{ns}/scoring/"
    cases = {
        "read-theirs": ({"uri": f"{STORE}/{other}/data/"}, {"uri": f"{STORE}/{ns}/x/"},
                        "spec.input.uri"),
        "write-theirs": ({"uri": mine}, {"uri": f"{STORE}/{other}/scores/"}, "spec.output.uri"),
        "climb-out": ({"uri": mine}, {"uri": f"{STORE}/{ns}/../{other}/scores/"},
                      "spec.output.uri"),
        "other-bucket": ({"uri": "s3://another-bucket/data/"}, {"uri": f"{STORE}/{ns}/y/"},
                         "spec.input.uri"),
    }  # fmt: skip
    for name, (source, output, _) in cases.items():
        create(kube, ns, batch(name, input=source, output=output))
    for name, (_, _, field) in cases.items():
        status = wait_phase(kube, ns, name, timeout=60)
        failed = condition(status, "Failed")
        assert (status["phase"], failed["reason"]) == ("Failed", "ForbiddenURI"), name
        assert failed["message"].startswith(f"{field}: "), failed["message"]
        assert not jobs_of(kube, ns, name), "nothing ran"

    # a name exists only in the other namespace: never found from this one
    create(kube, ns, {**batch("borrow", input={"uri": mine}, output={"uri": f"{STORE}/{ns}/b/"}),
                      "spec": {"modelVersion": "secret-v1", "input": {"uri": mine},
                               "output": {"uri": f"{STORE}/{ns}/b/"}}})  # fmt: skip
    waiting = eventually(
        lambda: condition(status_of(kube, ns, "batchpredictions", "borrow"), "Succeeded"),
        60,
        "the BatchPrediction to wait",
    )
    assert (waiting["status"], waiting["reason"]) == ("Unknown", "ModelVersionNotFound")
    assert waiting["message"] == "ModelVersion secret-v1 does not exist"

    # a version of this namespace pointing into the other's store is never Ready, so never used
    create(kube, ns, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion",
        "metadata": {"name": "smuggled-v1"},
        "spec": {
            "model": "smuggled", "version": 1, "task": "classification",
            "artifact": {"uri": f"{STORE}/{other}/secret/1", "sha256": "b" * 64},
            "framework": {"version": "1.9.1"}, "inputSchema": [{"name": "x", "type": "float"}],
        },
    })  # fmt: skip
    create(kube, ns, {**batch("smuggle"), "spec": {
        "modelVersion": "smuggled-v1", "requireApproval": False, "input": {"uri": mine},
        "output": {"uri": f"{STORE}/{ns}/s/"},
    }})  # fmt: skip
    refused = eventually(
        lambda: (
            (c := condition(status_of(kube, ns, "batchpredictions", "smuggle"), "Succeeded"))
            .get("reason") == "ModelVersionNotReady"
            and "ForbiddenURI" in c["message"]
            and c
        ),
        120,
        "the smuggled version to be refused (a waiting run looks again every 30 s)",
    )  # fmt: skip
    assert refused["status"] == "Unknown", refused
    assert (get(kube, ns, "batchpredictions", "smuggle") or {})["status"].get(
        "modelVersion"
    ) is None
    assert not jobs_of(kube, ns, "smuggle") and not jobs_of(kube, ns, "borrow")
