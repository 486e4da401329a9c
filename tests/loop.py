"""Steps of the ML loop shared by the integration tier (operator in-process) and the e2e tier
(operator installed by the chart): a TrainingJob manifest, predictions through the Service's
proxy, steady background traffic, a manual drift run.

The Deployment, its Service and the DriftMonitor are all named ``iris``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from typing import Any

from sklearn.datasets import load_iris

from tests.cluster.fixtures import KubeCluster
from tests.integration.fixtures import (
    GROUP,
    VERSION,
    create,
    eventually,
    status_of,
    training_finished,
)

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
IRIS = load_iris(as_frame=True).frame.set_axis([*FEATURES, "target"], axis=1)
ROWS = IRIS[FEATURES].to_dict(orient="records")


def training(name: str, **spec: Any) -> dict[str, Any]:
    base = {
        "model": "iris",
        "dataset": {"uri": "builtin:iris"},
        "estimator": {
            "className": "sklearn.linear_model.LogisticRegression",
            "hyperparameters": {"max_iter": 500},
        },
        "approvalPolicy": "AutoApproveOnGates",
        "activeDeadlineSeconds": 600,
    }
    base.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": base,
    }


def train(kube: KubeCluster, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    create(kube, namespace, training(name, **spec))
    done = training_finished(kube, namespace, name)
    assert done["phase"] == "Succeeded", done
    return done


def predict(
    kube: KubeCluster,
    namespace: str,
    rows: list[dict[str, float]],
    request_id: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST /predict through the API server's service proxy (works from any machine with the
    kubeconfig), with an ``X-Request-ID`` when given."""
    extra = {} if request_id is None else {"X-Request-ID": request_id}
    return post(kube, namespace, "predict", {"instances": rows}, extra)


def post(
    kube: KubeCluster,
    namespace: str,
    path: str,
    document: dict[str, Any],
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST a JSON document to the ``iris`` Service's `path` through the API server's proxy."""
    api = kube.api_client
    method, url, headers, body, _ = api.param_serialize(
        "POST",
        f"/api/v1/namespaces/{namespace}/services/iris:http/proxy/{path}",
        header_params={
            "Content-Type": "application/json",
            "Accept": "application/json",
            **(extra_headers or {}),
        },
        body=document,
        auth_settings=["BearerToken"],
    )
    try:
        response = api.call_api(method, url, headers, body, _request_timeout=10)
        data = response.read()
    except Exception as e:  # a refused or reset connection counts as a failed request
        return 599, {"error": str(e)}
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, {"error": data.decode(errors="replace")}


class Traffic:
    """Steady predictions in the background; every answer's status is kept."""

    def __init__(self, kube: KubeCluster, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        """Rows drawn at random, so canary and stable see the same mix of classes."""
        draw = random.Random(7)
        while not self._stop.is_set():
            status, _ = predict(self.kube, self.namespace, [draw.choice(ROWS)])
            self.statuses[status] += 1
            time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def server_deployments(kube: KubeCluster, namespace: str) -> dict[str, int]:
    items = kube.apps.list_namespaced_deployment(
        namespace, label_selector="mlkube.io/deployment=iris"
    ).items
    return {d.metadata.labels["mlkube.io/model-version"]: d.spec.replicas for d in items}


def run_drift_check(kube: KubeCluster, namespace: str, number: int) -> None:
    """A manual run of the DriftMonitor's CronJob, as `kubectl create job --from=cronjob/...` does."""
    from kubernetes import client

    cron = kube.batch.read_namespaced_cron_job("iris-drift", namespace)
    template = cron.spec.job_template
    job = client.V1Job(
        metadata=client.V1ObjectMeta(
            name=f"iris-drift-manual-{number}", labels=template.metadata.labels
        ),
        spec=template.spec,
    )
    kube.batch.create_namespaced_job(namespace, job)


def wait_runs(kube: KubeCluster, namespace: str, count: int) -> dict[str, Any]:
    return dict(
        eventually(
            lambda: (
                len((s := status_of(kube, namespace, "driftmonitors", "iris")).get("history", []))
                >= count
                and s
            ),
            240,
            f"drift run {count} to be folded into status",
            interval=2,
        )
    )
