"""Files in a namespace's artifact store for the BatchPrediction tests: the input written and the
output read back as a team would, by a short pod of its own that mounts the namespace's claim
(PVC mode), or with the namespace's key through s3fs (S3 mode).

The same two self-contained scripts do the work in both modes: they run in the runtime image
(python, pandas, pyarrow; no test code there) against the store's directory, or here against a
local copy that is then uploaded (or was downloaded).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from mlkube.config import ARTIFACT_MOUNT_PATH
from tests.cluster.fixtures import KubeCluster, wait_until
from tests.s3_fixtures import S3Server

STORE = f"file://{ARTIFACT_MOUNT_PATH}"

WRITE_INPUTS = """
import os, sys
import numpy as np
from sklearn.datasets import load_iris
folder, repeat, bad_row = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(folder, exist_ok=True)
frame = load_iris(as_frame=True).frame
frame.columns = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm", "target"]
frame = frame.drop(columns="target")
frame = frame.iloc[np.tile(np.arange(150), repeat)].reset_index(drop=True)
frame.insert(0, "id", [f"row-{i}" for i in range(len(frame))])
n = len(frame)
first, second = n * 2 // 5, n * 2 // 3
frame.iloc[:first].to_parquet(f"{folder}/a.parquet", row_group_size=16)
csv = frame.iloc[first:second].astype({"petal_width_cm": object})
if bad_row >= 0:
    csv.iloc[bad_row, csv.columns.get_loc("petal_width_cm")] = "wide"
csv.to_csv(f"{folder}/b.csv", index=False)
frame.iloc[second:].to_parquet(f"{folder}/c.parquet")
open(f"{folder}/_SUCCESS", "w").close()
print(n)
"""
"""argv: folder, repeat (the 150 iris rows, this many times), the b.csv row to spoil (-1: none).
Files: a.parquet (the first 40% of rows, in row groups of 16), b.csv (up to two thirds),
c.parquet (the rest), and a _SUCCESS marker that a prefix read skips."""

READ_OUTPUT = """
import glob, json, os, sys
import pyarrow.dataset as ds
folder = sys.argv[1]
names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
parts = [n for n in names if n.startswith("part-")]
table = ds.dataset(folder, format="parquet").to_table() if parts else None
manifest = None
if os.path.exists(f"{folder}/_manifest.json"):
    manifest = json.load(open(f"{folder}/_manifest.json"))
ids = table.column("id").to_pylist() if table is not None and "id" in table.column_names else []
print(json.dumps({
    "names": names,
    "parts": parts,
    "rows": 0 if table is None else table.num_rows,
    "columns": [] if table is None else table.column_names,
    "uniqueIds": len(set(ids)),
    "manifest": manifest,
}))
"""
"""argv: the output folder. Prints what it holds: names, parts, rows (read as one Parquet
dataset), columns, distinct ids, the manifest."""


def run_in_store(
    kube: KubeCluster, namespace: str, image: str, script: str, *args: str, timeout: float = 240
) -> str:
    """Run `script` with `args` in a pod of `namespace` mounting its artifact claim (restricted,
    the workloads' uid, no token); returns its output. Fails with the pod's log if it fails."""
    from kubernetes import client

    name = f"store-{uuid.uuid4().hex[:6]}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "store",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", script, *args],
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "artifacts", "mountPath": ARTIFACT_MOUNT_PATH},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "artifacts", "persistentVolumeClaim": {"claimName": "mlkube-artifacts"}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }
    kube.core.create_namespaced_pod(namespace, pod)
    try:
        phase = wait_until(
            lambda: (
                kube.core.read_namespaced_pod(name, namespace).status.phase
                in ("Succeeded", "Failed")
                and kube.core.read_namespaced_pod(name, namespace).status.phase
            ),
            timeout,
            f"store pod {name}",
        )
        log = str(kube.core.read_namespaced_pod_log(name, namespace))
        assert phase == "Succeeded", f"store pod {name} failed:\n{log}"
        return log
    finally:
        kube.core.delete_namespaced_pod(
            name, namespace, body=client.V1DeleteOptions(grace_period_seconds=0)
        )


def _local(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _s3fs(s3: S3Server) -> Any:
    import s3fs

    return s3fs.S3FileSystem(
        key=s3.env["AWS_ACCESS_KEY_ID"],
        secret=s3.env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=s3.env["AWS_ENDPOINT_URL"],
        skip_instance_cache=True,
    )


def write_inputs(
    kube: KubeCluster,
    namespace: str,
    image: str,
    uri: str,
    repeat: int = 1,
    bad_row: int = -1,
    s3: S3Server | None = None,
) -> int:
    """The iris rows (`repeat` times, with an ``id`` column) as a.parquet, b.csv and c.parquet
    under `uri` (a ``file://`` URI in the namespace's claim, or ``s3://`` with `s3`); returns
    the rows written."""
    args = (str(repeat), str(bad_row))
    if s3 is None:
        return int(
            run_in_store(kube, namespace, image, WRITE_INPUTS, uri.removeprefix("file://"), *args)
        )
    with tempfile.TemporaryDirectory() as folder:
        rows = int(_local(WRITE_INPUTS, folder, *args))
        fs = _s3fs(s3)
        for path in sorted(Path(folder).iterdir()):
            fs.put(str(path), f"{uri.removeprefix('s3://').rstrip('/')}/{path.name}")
    return rows


def read_output(
    kube: KubeCluster, namespace: str, image: str, uri: str, s3: S3Server | None = None
) -> dict[str, Any]:
    """What the output directory at `uri` holds (see READ_OUTPUT)."""
    if s3 is None:
        text = run_in_store(kube, namespace, image, READ_OUTPUT, uri.removeprefix("file://"))
        return dict(json.loads(text.strip().splitlines()[-1]))
    with tempfile.TemporaryDirectory() as folder:
        fs = _s3fs(s3)
        remote = uri.removeprefix("s3://").rstrip("/")
        if fs.exists(remote):
            fs.get(f"{remote}/", f"{folder}/out/", recursive=True)
        return dict(json.loads(_local(READ_OUTPUT, f"{folder}/out")))


def wait_phase(
    kube: KubeCluster, namespace: str, name: str, timeout: float = 300
) -> dict[str, Any]:
    """The BatchPrediction's status once it Succeeded or Failed."""
    from tests.integration.fixtures import status_of

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = status_of(kube, namespace, "batchpredictions", name)
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        time.sleep(2)
    raise AssertionError(f"BatchPrediction {name} did not finish in {timeout:.0f}s: {status}")
