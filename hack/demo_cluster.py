"""The demo's steps on the cluster (see hack/demo): apply the examples, wait, predict, score a
file in batch, show status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from sklearn.datasets import load_iris

from mlkube.api.crdgen import BY_KIND, KINDS
from mlkube.builders.common import pod_spec, runtime_container
from mlkube.config import OperatorConfig
from mlkube.controller.kube import Cluster

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "mlkube-demo"
PLURAL = {k.kind: k.plural for k in KINDS}
CONFIG = OperatorConfig()
"""The chart's defaults: the runtime image hack/build-images loaded, one claim per namespace."""

WRITE_INPUT = """
import os, sys
from sklearn.datasets import load_iris
folder = sys.argv[1]
os.makedirs(folder, exist_ok=True)
frame = load_iris(as_frame=True).frame.drop(columns="target")
frame.columns = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
frame.insert(0, "id", [f"iris-{i}" for i in range(len(frame))])
frame.iloc[:100].to_parquet(f"{folder}/iris-a.parquet")
frame.iloc[100:].to_csv(f"{folder}/iris-b.csv", index=False)
print(f"wrote the 150 iris rows with an id column under {folder}: iris-a.parquet (100), iris-b.csv (50)")
"""
"""argv: the input folder in the store. Two files, to show a prefix of Parquet and CSV."""

READ_OUTPUT = """
import sys
import pyarrow.dataset as ds
table = ds.dataset(sys.argv[1], format="parquet").to_table()
print(f"{table.num_rows} rows read back as one Parquet dataset (_manifest.json, _mlkube/ skipped); the first 5:")
print(table.slice(0, 5).to_pandas().to_string(index=False))
"""
"""argv: the output folder."""


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def wait(what: str, check: Any, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    sys.exit(
        f"timed out waiting for {what}; see `kubectl -n mlkube-system logs deploy/mlkube-operator`"
        " (or .work/demo-cluster/operator.log with --operator-on-host)"
    )


def status(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    obj = cluster.get_object(BY_KIND[kind], NAMESPACE, name)
    return dict((obj or {}).get("status") or {})


def in_store(cluster: Cluster, script: str, *args: str) -> str:
    """Run a python `script` in the runtime image as the namespace's workloads run (restricted,
    no token, its artifact claim mounted), as a team reaches its own store; returns its output.
    Exits with the pod's log if it fails."""
    name = f"demo-store-{uuid.uuid4().hex[:6]}"
    container = runtime_container(
        "store",
        CONFIG.runtime_image,
        [],
        [],
        {"requests": {"cpu": "100m", "memory": "256Mi"}},
        CONFIG,
    )
    container.update(command=["python", "-c", script], args=list(args))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": pod_spec(container, CONFIG, "Never"),
    }
    cluster.create(pod)

    def phase() -> str | None:
        found = (cluster.get("v1", "Pod", NAMESPACE, name) or {}).get("status") or {}
        return found.get("phase") if found.get("phase") in ("Succeeded", "Failed") else None

    try:
        ended = wait(f"pod {name}", phase)
        log = str(cluster.core.read_namespaced_pod_log(name, NAMESPACE))
        if ended != "Succeeded":
            sys.exit(f"pod {name} failed:\n{log}")
        return log
    finally:
        cluster.delete("v1", "Pod", NAMESPACE, name)


def in_namespace(uri: str) -> str:
    """An example's store URI (it names the namespace `default`) in the demo's namespace."""
    default = f"{CONFIG.artifact_root}/default/"
    return f"{CONFIG.artifact_root}/{NAMESPACE}/{uri.removeprefix(default)}"


def batch(cluster: Cluster) -> None:
    """Write an input prefix into the namespace's store, score it, show the run and its output."""
    manifest = yaml.safe_load((ROOT / "examples/batchprediction.yaml").read_text())
    manifest["metadata"]["namespace"] = NAMESPACE
    spec = manifest["spec"]
    for side in ("input", "output"):
        spec[side]["uri"] = in_namespace(spec[side]["uri"])
    name = manifest["metadata"]["name"]
    if cluster.get_object(BY_KIND["BatchPrediction"], NAMESPACE, name) is None:
        # once: a run in progress is never handed a rewritten input
        print(in_store(cluster, WRITE_INPUT, spec["input"]["uri"].removeprefix("file://")), end="")
        cluster.create_custom(BY_KIND["BatchPrediction"], manifest)
    else:
        print(f"BatchPrediction {name} exists (a demo ran here before): its run is shown")
    shown: list[str] = []

    def done() -> dict[str, Any] | None:
        s = status(cluster, "BatchPrediction", name)
        line = f"   {s.get('phase') or 'Pending'}: {s.get('progress') or ''}".rstrip(": ")
        if line not in shown:
            shown.append(line)
            print(line, flush=True)
        return s if s.get("phase") in ("Succeeded", "Failed") else None

    scored = wait("the BatchPrediction", done, timeout=900)
    fields = ("phase", "modelVersion", "rows", "rowsScored", "shards", "failedShards")
    print(json.dumps({k: scored.get(k) for k in fields if k in scored}, indent=2))
    print(f"output: {spec['output']['uri']} (manifest {scored.get('manifestUri')})")
    if scored["phase"] != "Succeeded":
        sys.exit(f"the BatchPrediction failed: `kubectl -n {NAMESPACE} describe mlbp {name}`")
    print(in_store(cluster, READ_OUTPUT, spec["output"]["uri"].removeprefix("file://")), end="")


def main() -> None:
    cluster = Cluster()
    step("TrainingJob examples/trainingjob.yaml: train iris, gate, register")
    for name in ("trainingjob", "deployment"):
        manifest = yaml.safe_load((ROOT / f"examples/{name}.yaml").read_text())
        manifest["metadata"]["namespace"] = NAMESPACE
        cluster.create_custom(BY_KIND[manifest["kind"]], manifest)
    trained = wait(
        "the training",
        lambda: (
            (s := status(cluster, "TrainingJob", "iris-train-1")).get("phase")
            in ("Succeeded", "Failed")
            and s
        ),
    )
    print(json.dumps({k: trained.get(k) for k in ("phase", "modelVersion", "metrics")}, indent=2))
    step("Deployment examples/deployment.yaml: serve the newest approved version")
    wait(
        "the Deployment to serve",
        lambda: status(cluster, "Deployment", "iris").get("phase") == "Healthy",
    )
    rows = load_iris(as_frame=True).frame.iloc[::15, :4]
    rows.columns = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
    answer = cluster.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/services/iris:http/proxy/predict",
        {"instances": rows.to_dict(orient="records")},
    )
    print(
        f"predictions for {len(rows)} iris rows through the Service: {answer['predictions']} ({answer['modelVersion']})"
    )
    step("BatchPrediction examples/batchprediction.yaml: score files in the store, in shards")
    batch(cluster)
    step("DriftMonitor examples/driftmonitor.yaml: compare live inputs with the training sample")
    manifest = yaml.safe_load((ROOT / "examples/driftmonitor.yaml").read_text())
    manifest["metadata"]["namespace"] = NAMESPACE
    cluster.create_custom(BY_KIND["DriftMonitor"], manifest)
    wait("the drift CronJob", lambda: status(cluster, "DriftMonitor", "iris").get("cronJobName"))
    step("mlkube status")
    subprocess.run(
        [str(Path(sys.executable).with_name("mlkube")), "-n", NAMESPACE, "status"], check=True
    )
    print(
        "\nThe loop runs on the cluster. `mlkube -n mlkube-demo status iris` shows the rollout; `hack/demo down` stops it."
    )


if __name__ == "__main__":
    main()
