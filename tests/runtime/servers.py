"""A real model server process for runtime tests: started on a free port, its output in a file;
and the iris model it serves, stored as the trainer stores it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlkube.api.modelversion import Column
from mlkube.runtime import artifacts

STARTUP_SECONDS = 90.0


@dataclass
class ServerProcess:
    """A server subprocess with its output in a file (a pipe could fill up and block it)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _log_file: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server not ready after {STARTUP_SECONDS} s:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown, as the kubelet does), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(command: list[str], env: dict[str, str], log_path: Path) -> ServerProcess:
    port = free_port()
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "BENTOML_HOME": str(log_path.parent / "bentoml-home"), **env},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop() reaches every child
    )
    return ServerProcess(process, port, log_path, log_file)


SERVE_COMMAND = [sys.executable, "-m", "mlkube.runtime.cli", "serve"]  # `mlkube-runtime serve`


IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@dataclass(frozen=True)
class IrisArtifact:
    directory: Path
    sha256: str
    estimator: LogisticRegression
    features: pd.DataFrame


def save_iris_artifact(directory: Path) -> IrisArtifact:
    """A real LogisticRegression fitted on a DataFrame (classes 0, 1, 2), stored in `directory`."""
    iris = load_iris(as_frame=True)
    features = iris.data.set_axis(IRIS_FEATURES, axis=1)
    estimator = LogisticRegression(max_iter=1000).fit(features, iris.target)
    digest = artifacts.save_model(str(directory), estimator)
    schema = artifacts.ModelSchema(
        task="classification",
        target="species",
        columns=[Column(name=name, type="float") for name in IRIS_FEATURES],
        classes=[str(c) for c in estimator.classes_],
    )
    artifacts.write_json(artifacts.join(str(directory), artifacts.SCHEMA_FILE), schema.to_json())
    return IrisArtifact(directory, digest, estimator, features)


def model_env(artifact: IrisArtifact, **extra: str) -> dict[str, str]:
    return {
        "MLKUBE_MODEL_URI": str(artifact.directory),
        "MLKUBE_MODEL_SHA256": artifact.sha256,
        "MLKUBE_MODEL_VERSION": "iris-v1",
        "MLKUBE_MODEL_NAME": "iris",
        "MLKUBE_MODEL_VERSION_NUMBER": "1",
        "MLKUBE_POD_NAME": "test-pod",
        **extra,
    }


def rows(frame: pd.DataFrame) -> list[dict[str, float]]:
    """A frame as the ``instances`` of a request."""
    return [{str(k): float(v) for k, v in r.items()} for r in frame.to_dict(orient="records")]
