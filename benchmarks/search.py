"""Hyperparameter search on the real cluster: the time from applying a TrainingJob with
`spec.search` to its winner, for 6 and 60 trials, against the trials' own fit times.

For each size it prints: apply -> every trial recorded (the winner is known), apply -> the winner
trained, gated and registered (Succeeded); the sum of the trials' fit seconds (each trial pod
measures its own fits) and the same trials run one after another in this process (data loading
included, no pods) as floors measured in the same run; and the ratios. The difference is what
running trials as pods costs: scheduling, image start, Python imports, the data loaded per pod.
A measurement, not a test. Run it alone (2 cores):

    export KUBECONFIG=$(hack/cluster up)
    flock /tmp/mlkube-build.lock hack/build-images
    flock /tmp/mlkube-bench.lock .venv/bin/python benchmarks/search.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config

from mlkube import __version__
from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.core.search import trial_records
from mlkube.runtime.train import TrainRequest, run_trial

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION = "mlkube.io", "v1alpha1"


def search_spec(trials: int, parallelism: int) -> dict[str, Any]:
    return {
        "model": f"bench-{trials}",
        "dataset": {"uri": "builtin:breast_cancer"},
        "estimator": {"className": "sklearn.ensemble.RandomForestClassifier"},
        "search": {
            "method": "Random",
            "trials": trials,
            "parallelism": parallelism,
            "seed": 1,
            "space": {
                "n_estimators": {"min": "50", "max": "150", "type": "int"},
                "max_depth": {"values": [4, 8, None]},
            },
        },
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "approvalPolicy": "AutoApproveOnGates",
        "activeDeadlineSeconds": 3600,
    }


def in_process_seconds(spec: dict[str, Any]) -> float:
    """Every trial one after another in this process: the floor without pods."""
    parsed = TrainingJobSpec.model_validate(spec)
    assert parsed.search is not None
    with tempfile.TemporaryDirectory() as store:
        request = TrainRequest(parsed, store, "bench", 1)
        started = time.perf_counter()
        for index in range(parsed.search.trial_count()):
            run_trial(request, index)
        return time.perf_counter() - started


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def run(
    custom: Any, core: Any, batch: Any, ns: str, trials: int, parallelism: int
) -> dict[str, float]:
    name = f"search-{trials}"
    spec = search_spec(trials, parallelism)
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob",
                "metadata": {"name": name}, "spec": spec}  # fmt: skip
    started = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", manifest)

    def status() -> dict[str, Any]:
        got = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", name)
        return dict(got.get("status") or {})

    def trials_done() -> bool:
        job = batch.read_namespaced_job(f"{name}-trials", ns) if status().get("search") else None
        conditions = (job.status.conditions or []) if job else []
        return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)

    wait_for(trials_done, 3600, f"{name}'s trials")
    recorded = time.monotonic() - started
    final = wait_for(lambda: status().get("phase") in ("Succeeded", "Failed") and status(), 3600,
                     f"{name} to finish")  # fmt: skip
    winner = time.monotonic() - started
    pods = core.list_namespaced_pod(ns, label_selector=f"job-name={name}-trials").items
    records = trial_records([client.ApiClient().sanitize_for_serialization(p) for p in pods])
    fit = sum(float(r.get("fitSeconds") or 0) for r in records)
    running = sum(
        (p.status.container_statuses[0].state.terminated.finished_at
         - p.status.container_statuses[0].state.terminated.started_at).total_seconds()
        for p in pods if p.status.container_statuses and p.status.container_statuses[0].state.terminated
    )  # fmt: skip
    return {
        "phase_ok": float(final["phase"] == "Succeeded"),
        "trials": float(len(records)),
        "recorded": recorded,
        "winner": winner,
        "fit": fit,
        "pod_seconds": running,
        "in_process": in_process_seconds(spec),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[6, 60])
    parser.add_argument("--parallelism", type=int, default=3)
    args = parser.parse_args()
    config.load_kube_config()
    subprocess.run(["kubectl", "apply", "--server-side", "--force-conflicts", "-f",
                    str(ROOT / "crds")], check=True, capture_output=True)  # fmt: skip
    api = client.ApiClient()
    custom, core, batch = (
        client.CustomObjectsApi(api),
        client.CoreV1Api(api),
        client.BatchV1Api(api),
    )
    ns = f"mlkube-bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    log = (ROOT / ".work").joinpath("search-benchmark.log")
    log.parent.mkdir(exist_ok=True)
    env = {**os.environ, "MLKUBE_METRICS_PORT": "0",
           "MLKUBE_RUNTIME_IMAGE": f"localhost/mlkube-runtime:{__version__}"}  # fmt: skip
    operator = subprocess.Popen(
        [str(Path(sys.executable).with_name("kopf")), "run", "--standalone", "-n", ns, "-m", "mlkube.controller.main"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(5)
        print(f"search benchmark: Random search of a RandomForestClassifier on breast_cancer, "
              f"parallelism {args.parallelism}, namespace {ns}, {os.cpu_count()} cores")  # fmt: skip
        print(f"{'trials':>6} {'ok':>3} {'->trials s':>10} {'->winner s':>10} {'sum fit s':>9} "
              f"{'pod s':>7} {'in-proc s':>9} {'winner/fit':>10} {'winner/(fit/par)':>16} "
              f"{'winner/in-proc':>14}")  # fmt: skip
        for size in args.sizes:
            r = run(custom, core, batch, ns, size, args.parallelism)
            print(f"{size:>6} {'yes' if r['phase_ok'] else 'NO':>3} {r['recorded']:>10.1f} "
                  f"{r['winner']:>10.1f} {r['fit']:>9.2f} {r['pod_seconds']:>7.1f} "
                  f"{r['in_process']:>9.1f} {r['winner'] / r['fit']:>10.1f} "
                  f"{r['winner'] / (r['fit'] / args.parallelism):>16.1f} "
                  f"{r['winner'] / r['in_process']:>14.1f}", flush=True)  # fmt: skip
    finally:
        operator.terminate()
        operator.wait(30)
        core.delete_namespace(ns)


if __name__ == "__main__":
    main()
