"""The demo's steps on the cluster (see hack/demo): apply the examples, wait, predict, show status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from sklearn.datasets import load_iris

from mlkube.api.crdgen import BY_KIND, KINDS
from mlkube.controller.kube import Cluster

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "mlkube-demo"
PLURAL = {k.kind: k.plural for k in KINDS}


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


def main() -> None:
    cluster = Cluster()
    try:
        cluster.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
        )
    except client.ApiException as e:
        if e.status != 409:
            raise
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
    api = cluster.api
    method, url, headers, body, _ = api.param_serialize(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/services/iris:http/proxy/predict",
        header_params={"Content-Type": "application/json"},
        body={"instances": rows.to_dict(orient="records")},
        auth_settings=["BearerToken"],
    )
    answer = json.loads(api.call_api(method, url, headers, body).read())
    print(
        f"predictions for {len(rows)} iris rows through the Service: {answer['predictions']} ({answer['modelVersion']})"
    )
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
