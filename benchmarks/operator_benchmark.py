"""The operator under load on the real cluster: N suspended TrainingJobs and N Deployments with
0 replicas applied at once (`--count`, default 200). Prints time to first child (p50/p95), time
until every object has settled, the operator's peak RSS, and API requests (the operator's own, per
object, and the API server's count for all clients). A measurement, not a test.

    KUBECONFIG=$(hack/cluster up) hack/build-images && .venv/bin/python benchmarks/operator_benchmark.py
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

from mlkube.controller.kube import Cluster

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION = "mlkube.io", "v1alpha1"
TRAINING = {
    "model": "bench",
    "dataset": {"uri": "builtin:iris"},
    "estimator": {"className": "sklearn.naive_bayes.GaussianNB"},
    "approvalPolicy": "AutoApproveOnGates",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape_total(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def apiserver_requests(api: client.ApiClient) -> float:
    method, url, headers, body, _ = api.param_serialize(
        "GET", "/metrics", auth_settings=["BearerToken"]
    )
    text = api.call_api(method, url, headers, body).read().decode()
    return scrape_total(text, "apiserver_request_total{")


class ChildWatch:
    """Records when each child first appears, from a watch stream (not from polling)."""

    def __init__(self, list_fn: Any, namespace: str, selector: str, name_of: Any) -> None:
        self.seen: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(
            target=self._run, args=(list_fn, namespace, selector, name_of), daemon=True
        )
        self._thread.start()

    def _run(self, list_fn: Any, namespace: str, selector: str, name_of: Any) -> None:
        stream = watch.Watch()
        for event in stream.stream(
            list_fn, namespace, label_selector=selector, timeout_seconds=900
        ):
            owner = name_of(event["object"])
            if owner and owner not in self.seen:
                self.seen[owner] = time.monotonic()
            if self._stop:
                stream.stop()

    def stop(self) -> None:
        self._stop = True


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    q = statistics.quantiles(values, n=20) if len(values) > 1 else [values[0]] * 19
    return f"p50 {statistics.median(values):6.2f} s   p95 {q[18]:6.2f} s"


def wait_all(what: str, check: Any, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(1)
    sys.exit(f"timed out waiting for {what}")


def install_crds() -> None:
    """The generated CRDs, server-side applied, then a moment for them to be served."""
    cluster = Cluster()
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        cluster.apply(yaml.safe_load(path.read_text()))
    time.sleep(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    config.load_kube_config()
    install_crds()
    api = client.ApiClient()
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    batch, apps = client.BatchV1Api(api), client.AppsV1Api(api)
    ns = f"mlkube-bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    port = free_port()
    env = {**os.environ, "MLKUBE_METRICS_PORT": str(port)}
    log = (ROOT / ".work").joinpath("operator-benchmark.log")
    log.parent.mkdir(exist_ok=True)
    operator = subprocess.Popen(
        [str(Path(sys.executable).with_name("kopf")), "run", "--standalone", "-n", ns, "-m", "mlkube.controller.main"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(5)
        before = apiserver_requests(api)

        # -- a servable model for the Deployments --------------------------------------------
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, "trainingjobs",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": "seed"}, "spec": TRAINING},
        )  # fmt: skip

        def version_ready() -> bool:
            try:
                mv = custom.get_namespaced_custom_object(
                    GROUP, VERSION, ns, "modelversions", "bench-v1"
                )
            except client.ApiException:
                return False
            return (mv.get("status") or {}).get("phase") == "Ready"

        wait_all("the seed model", version_ready, 300)

        # -- 200 suspended TrainingJobs ---------------------------------------------------------
        jobs = ChildWatch(batch.list_namespaced_job, ns, "app.kubernetes.io/name=mlkube-trainer",
                          lambda j: j.metadata.labels.get("mlkube.io/trainingjob"))  # fmt: skip
        created: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(args.count):
            name = f"tj-{i:03d}"
            custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, "trainingjobs",
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name},
                 "spec": {**TRAINING, "suspend": True}},
            )  # fmt: skip
            created[name] = time.monotonic()
        apply_tj = time.monotonic() - t0

        def all_suspended() -> bool:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs")[
                "items"
            ]
            return (
                sum((i.get("status") or {}).get("phase") == "Suspended" for i in items)
                >= args.count
            )

        settle_tj = wait_all("every TrainingJob to report Suspended", all_suspended, 900) + apply_tj
        jobs.stop()
        tj_latency = [jobs.seen[n] - t for n, t in created.items() if n in jobs.seen]

        # -- 200 Deployments with 0 replicas ----------------------------------------------------
        children = ChildWatch(apps.list_namespaced_deployment, ns, "app.kubernetes.io/managed-by=mlkube",
                              lambda d: d.metadata.labels.get("mlkube.io/deployment"))  # fmt: skip
        created = {}
        t0 = time.monotonic()
        for i in range(args.count):
            name = f"dep-{i:03d}"
            custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, "deployments",
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Deployment", "metadata": {"name": name},
                 "spec": {"modelVersion": "bench-v1", "replicas": 0}},
            )  # fmt: skip
            created[name] = time.monotonic()
        apply_dep = time.monotonic() - t0

        def all_healthy() -> bool:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "deployments")["items"]
            return (
                sum((i.get("status") or {}).get("phase") == "Healthy" for i in items) >= args.count
            )

        settle_dep = wait_all("every Deployment to report Healthy", all_healthy, 900) + apply_dep
        children.stop()
        dep_latency = [children.seen[n] - t for n, t in created.items() if n in children.seen]

        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
        own = scrape_total(metrics, "mlkube_operator_api_requests_total{")
        everyone = apiserver_requests(api) - before
        rss = peak_rss_mb(operator.pid)
        print(
            f"\noperator benchmark, {args.count} of each kind, one operator process, namespace {ns}\n"
        )
        print(f"{'':34}{'first child':>34}{'all settled':>14}")
        print(
            f"{'TrainingJobs (suspend: true)':34}{percentiles(tj_latency):>34}{settle_tj:>12.1f} s   ({len(tj_latency)} Jobs)"
        )
        print(
            f"{'Deployments (0 replicas)':34}{percentiles(dep_latency):>34}{settle_dep:>12.1f} s   ({len(dep_latency)} apps/v1)"
        )
        print(f"\noperator peak RSS                 {rss:8.1f} MB")
        print(
            f"API requests by mlkube's client   {own:8.0f}   ({own / (2 * args.count + 1):.1f} per object)"
        )
        print(
            f"API requests, all clients         {everyone:8.0f}   (API server's apiserver_request_total delta)"
        )
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        core.delete_namespace(ns)


if __name__ == "__main__":
    main()
