"""The artifact store and the inference log on a real S3 server (SeaweedFS, started by hack/s3).

The runtime finds the server the way a pod does: s3fs/botocore read AWS_ENDPOINT_URL and the
keys from the environment, nothing else is configured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlkube.layout import CALIBRATION_FILE
from mlkube.runtime import artifacts
from mlkube.runtime.inference_log import PREDICTION_COLUMN, SegmentWriter, count_rows, read_window
from tests.s3_fixtures import S3Server

pytestmark = pytest.mark.runtime

RUNTIME = [sys.executable, "-m", "mlkube.runtime.cli"]  # `mlkube-runtime`
VERSION_FILES = {
    artifacts.MODEL_FILE,
    artifacts.DIGEST_FILE,
    artifacts.SCHEMA_FILE,
    artifacts.METRICS_FILE,
    artifacts.LINEAGE_FILE,
    artifacts.REFERENCE_FILE,
    CALIBRATION_FILE,  # iris's LogisticRegression keeps the isotonic calibration it fitted
}


def names_under(uri: str) -> set[str]:
    fs, path = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache(path)
    return {p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}


def test_s3fs_takes_the_endpoint_from_aws_endpoint_url(s3_root: str) -> None:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.connect()
    assert fs.s3.meta.endpoint_url == os.environ["AWS_ENDPOINT_URL"]


def test_artifacts_round_trip_and_a_tampered_model_is_refused(s3_root: str) -> None:
    artifacts.write_bytes(f"{s3_root}/a/b.bin", b"\x00payload")
    assert artifacts.read_bytes(f"{s3_root}/a/b.bin") == b"\x00payload"
    assert names_under(f"{s3_root}/a") == {"b.bin"}, "no temporary object is left behind"

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    directory = artifacts.version_uri(s3_root, "ns", "iris", 1)
    digest = artifacts.save_model(directory, model)
    loaded: Any = artifacts.load_verified_model(directory, digest)
    assert (loaded.predict(x) == model.predict(x)).all()

    artifacts.write_bytes(artifacts.join(directory, artifacts.MODEL_FILE), b"not the model")
    with pytest.raises(artifacts.ArtifactError, match="tampered"):
        artifacts.load_verified_model(directory)
    with pytest.raises(artifacts.ArtifactError, match="does not exist"):
        artifacts.read_bytes(f"{s3_root}/missing")


def train_command(spec: Path, root: str, namespace: str) -> list[str]:
    return [
        *RUNTIME,
        "train",
        "--spec",
        str(spec),
        "--artifact-root",
        root,
        "--namespace",
        namespace,
    ]


def write_spec(tmp_path: Path, model: str) -> Path:
    spec = tmp_path / f"{model}.yaml"
    spec.write_text(
        f"model: {model}\ndataset: {{uri: 'builtin:iris'}}\n"
        "estimator: {className: sklearn.linear_model.LogisticRegression, "
        "hyperparameters: {max_iter: 500}}\n"
    )
    return spec


def test_training_cli_writes_the_version_directory_to_s3(s3_root: str, tmp_path: Path) -> None:
    run = subprocess.run(
        train_command(write_spec(tmp_path, "iris"), s3_root, "ns"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "Succeeded"
    assert result["artifactUri"] == f"{s3_root}/ns/iris/1"
    assert names_under(result["artifactUri"]) == VERSION_FILES
    assert artifacts.load_verified_model(result["artifactUri"], result["sha256"]) is not None


def test_inference_log_writes_and_reads_segments_on_s3(s3_root: str) -> None:
    uri = artifacts.inference_log_uri(s3_root, "ns", "iris")
    with SegmentWriter(uri, writer_id="pod-a", max_rows=1000, retention_segments=2) as writer:
        for start in (0, 10, 20):
            values = np.arange(start, start + 10, dtype=np.float64)
            writer.append({"x": values}, values * 2)
            writer.flush()
    assert len(names_under(uri)) == 2, "retention keeps the newest two segments"
    assert count_rows(uri) == 20
    window = read_window(uri, rows=15, columns=["x", PREDICTION_COLUMN])
    assert window.column("x").to_pylist() == [float(v) for v in range(15, 30)]
    assert window.column(PREDICTION_COLUMN).to_pylist() == [2.0 * v for v in range(15, 30)]


def run_with(env: dict[str, str], command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a runtime command with only these S3 credentials, as a namespace's pod would."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLKUBE_S3_"))}
    return subprocess.run(command, env={**base, **env}, capture_output=True, text=True, check=False)


def test_a_key_scoped_to_one_namespace_prefix_cannot_read_another(
    s3_server: S3Server, tmp_path: Path
) -> None:
    root = f"s3://{s3_server.bucket}/tenancy"
    key_a = s3_server.identity("tenancy-ns-a", "tenancy/ns-a")
    key_b = s3_server.identity("tenancy-ns-b", "tenancy/ns-b")
    spec = write_spec(tmp_path, f"iris-{uuid.uuid4().hex[:8]}")

    trained = {}
    for namespace, key in (("ns-a", key_a), ("ns-b", key_b)):
        run = run_with(key, train_command(spec, root, namespace))
        assert run.returncode == 0, f"{namespace}'s own key trains into its prefix: {run.stderr}"
        trained[namespace] = json.loads(run.stdout)

    def verify(key: dict[str, str], namespace: str) -> subprocess.CompletedProcess[str]:
        result = trained[namespace]
        return run_with(
            key, [*RUNTIME, "verify", "--uri", result["artifactUri"], "--sha256", result["sha256"]]
        )

    assert verify(key_a, "ns-a").returncode == 0
    refused = verify(key_a, "ns-b")
    assert refused.returncode != 0
    assert "Verified" not in refused.stdout
    assert "PermissionError" in refused.stderr, "the server refuses (403), not a missing file"
    written = run_with(key_a, train_command(spec, root, "ns-b"))
    assert written.returncode != 0, "ns-a's key cannot write into ns-b either"
