"""The operator under load on the real cluster: N suspended TrainingJobs and N Deployments with
0 replicas created as fast as one client can (`--count`, default 200). Prints time to first child
(p50/p95) and until every object has settled; kube-controller-manager's own Deployment controller
in the same burst for reference (not a floor: it is rate-limited to 20 requests/s); CPU
milliseconds per object of each process of the local control plane and of the operator (the
control plane's CPU is what a burst on 2 cores runs out of); the operator's peak RSS; and API
requests (the operator's own by verb, and the API server's count for all clients by verb and
resource). Everything is watched, never polled: the benchmark must not take the CPU it measures.
A measurement, not a test.

    export KUBECONFIG=$(hack/cluster up)
    hack/build-images && .venv/bin/python benchmarks/operator_benchmark.py
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
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


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cluster_processes() -> dict[str, int]:
    """The local cluster's control plane on this machine (empty for a remote cluster)."""
    found = {}
    for name in ("kube-apiserver", "etcd", "kube-controller-manager"):
        pids = subprocess.run(
            ["pgrep", "-x", name[:15]], check=False, capture_output=True, text=True
        ).stdout
        if pids.split():
            found[name] = int(pids.split()[0])
    return found


class CpuMeter:
    """CPU seconds each process spent between `start` and `stop`."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes
        self._start: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.processes.items()}

    def stop(self) -> None:
        self.spent = {
            name: cpu_seconds(pid) - self._start[name] for name, pid in self.processes.items()
        }

    def line(self, count: int) -> str:
        return "   ".join(f"{name} {1000 * s / count:5.1f}" for name, s in self.spent.items())


def scrape_total(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def apiserver_requests(api: client.ApiClient) -> Counter[tuple[str, str]]:
    """The API server's own count of requests by (verb, resource), all clients."""
    method, url, headers, body, _ = api.param_serialize(
        "GET", "/metrics", auth_settings=["BearerToken"]
    )
    text = api.call_api(method, url, headers, body).read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            key = (labels.get("verb", ""), labels.get("resource", ""))
            counts[key] += int(float(line.rsplit(" ", 1)[1]))
    return counts


class Watch:
    """When each object first showed something, from one watch stream (never from polling, and
    parsed as plain JSON: the benchmark must not take the CPU it measures). `key` names the
    object an event counts for (None: it does not count yet)."""

    def __init__(self, list_fn: Any, args: tuple[Any, ...], selector: str | None, key: Any) -> None:
        self.seen: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(
            target=self._run, args=(list_fn, args, selector, key), daemon=True
        )
        self._thread.start()

    def _run(self, list_fn: Any, args: tuple[Any, ...], selector: str | None, key: Any) -> None:
        stream = watch.Watch()
        for event in stream.stream(
            list_fn, *args, label_selector=selector, timeout_seconds=900, deserialize=False
        ):
            name = key(event["object"])
            if name and name not in self.seen:
                self.seen[name] = time.monotonic()
            if self._stop:
                stream.stop()

    def wait(self, what: str, count: int, timeout: float) -> float:
        """Seconds until `count` objects were seen, from the first one created."""
        started = time.monotonic()
        while len(self.seen) < count:
            if time.monotonic() - started > timeout:
                sys.exit(f"timed out waiting for {what} ({len(self.seen)} of {count})")
            time.sleep(0.2)
        self._stop = True
        return max(self.seen.values())

    def stop(self) -> None:
        self._stop = True


def labelled(label: str) -> Any:
    return lambda body: (body["metadata"].get("labels") or {}).get(label)


def in_phase(phase: str) -> Any:
    return lambda body: (
        body["metadata"]["name"] if (body.get("status") or {}).get("phase") == phase else None
    )


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
    parser.add_argument(
        "--idle",
        type=float,
        default=0,
        help="after everything settled, measure CPU for this many seconds of no change (with "
        "MLKUBE_RESYNC_SECONDS set, what the operator's resync passes cost)",
    )
    args = parser.parse_args()
    config.load_kube_config()
    install_crds()
    api = client.ApiClient()
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    ns = f"mlkube-bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    port = free_port()
    # the benchmark reads /metrics without a token
    env = {**os.environ, "MLKUBE_METRICS_PORT": str(port), "MLKUBE_METRICS_SECURE": "false"}
    log = (ROOT / ".work").joinpath("operator-benchmark.log")
    log.parent.mkdir(exist_ok=True)
    operator = subprocess.Popen(
        [str(Path(sys.executable).with_name("kopf")), "run", "--standalone", "-n", ns, "-m", "mlkube.controller.main"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    processes = {**cluster_processes(), "operator": operator.pid, "benchmark": os.getpid()}
    meters = {"TrainingJobs": CpuMeter(processes), "Deployments": CpuMeter(processes)}
    idle = CpuMeter(processes)
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
        jobs = Watch(
            custom.list_namespaced_custom_object,
            ("batch", "v1", ns, "jobs"),
            "app.kubernetes.io/name=mlkube-trainer",
            labelled("mlkube.io/trainingjob"),
        )
        suspended = Watch(custom.list_namespaced_custom_object, (GROUP, VERSION, ns, "trainingjobs"),
                          None, in_phase("Suspended"))  # fmt: skip
        created: dict[str, float] = {}
        meters["TrainingJobs"].start()
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
        settle_tj = suspended.wait("every TrainingJob to report Suspended", args.count, 900) - t0
        meters["TrainingJobs"].stop()
        jobs.stop()
        tj_latency = [jobs.seen[n] - t for n, t in created.items() if n in jobs.seen]

        # -- 200 Deployments with 0 replicas ----------------------------------------------------
        children = Watch(
            custom.list_namespaced_custom_object,
            ("apps", "v1", ns, "deployments"),
            "app.kubernetes.io/managed-by=mlkube",
            labelled("mlkube.io/deployment"),
        )
        healthy = Watch(
            custom.list_namespaced_custom_object,
            (GROUP, VERSION, ns, "deployments"),
            None,
            in_phase("Healthy"),
        )
        # for reference: kube-controller-manager's own Deployment controller in the same burst
        replicasets = Watch(custom.list_namespaced_custom_object, ("apps", "v1", ns, "replicasets"),
                            "app.kubernetes.io/name=mlkube-server", labelled("mlkube.io/deployment"))  # fmt: skip
        created = {}
        meters["Deployments"].start()
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
        settle_dep = healthy.wait("every Deployment to report Healthy", args.count, 900) - t0
        meters["Deployments"].stop()
        replicasets.wait("every ReplicaSet", args.count, 300)
        if args.idle:
            idle.start()
            time.sleep(args.idle)
            idle.stop()
        children.stop()
        dep_latency = [children.seen[n] - t for n, t in created.items() if n in children.seen]
        rs_latency = [
            t - children.seen[n] for n, t in replicasets.seen.items() if n in children.seen
        ]

        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
        own = scrape_total(metrics, "mlkube_operator_api_requests_total{")
        everyone = apiserver_requests(api)
        everyone.subtract(before)
        rss = peak_rss_mb(operator.pid)
        print(
            f"\noperator benchmark, {args.count} of each kind, one operator process, namespace {ns}\n"
        )
        print(f"{'':34}{'created in':>12}{'first child':>34}{'all settled':>14}")
        print(
            f"{'TrainingJobs (suspend: true)':34}{apply_tj:>10.1f} s{percentiles(tj_latency):>34}{settle_tj:>12.1f} s   ({len(tj_latency)} Jobs)"
        )
        print(
            f"{'Deployments (0 replicas)':34}{apply_dep:>10.1f} s{percentiles(dep_latency):>34}{settle_dep:>12.1f} s   ({len(dep_latency)} apps/v1)"
        )
        print(
            f"{'  reference: apps/v1 -> ReplicaSet':34}{'':12}{percentiles(rs_latency):>34}{'':14}   (kube's Deployment controller, same burst)"
        )
        print("\nCPU milliseconds per object, from the first create until every object settled:")
        for kind, meter in meters.items():
            print(f"    {kind:14} {meter.line(args.count)}")
        if args.idle:
            resync = os.environ.get("MLKUBE_RESYNC_SECONDS", "600 (default)")
            print(
                f"  then {args.idle:.0f} s without a change (MLKUBE_RESYNC_SECONDS={resync}), "
                f"per object of both kinds:\n    {'idle':14} {idle.line(2 * args.count)}"
            )
        print(f"\noperator peak RSS                 {rss:8.1f} MB")
        print(
            f"API requests by mlkube's client   {own:8.0f}   ({own / (2 * args.count + 1):.1f} per object)"
        )
        for line in metrics.splitlines():
            if line.startswith("mlkube_operator_api_requests_total{"):
                verb = line.split('"')[1]
                print(f"    {verb:8} {float(line.rsplit(' ', 1)[1]):8.0f}")
        print(
            f"API requests, all clients         {everyone.total():8.0f}   (API server's apiserver_request_total delta)"
        )
        for (verb, resource), n in everyone.most_common(12):
            if verb not in ("WATCH", "LIST") or n > args.count // 10:
                print(f"    {verb:8} {resource:32} {n:8}")
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        core.delete_namespace(ns)


if __name__ == "__main__":
    main()
