"""The inference log's byte budget: a flood of requests to one model cannot fill the namespace's
store, as the oldest segments of its version directory go first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlkube.api.deployment import DeploymentSpec
from mlkube.api.modelversion import ModelVersionSpec
from mlkube.builders.common import Owner
from mlkube.builders.serving import build_server_deployment
from mlkube.config import OperatorConfig
from mlkube.runtime.inference_log import SegmentWriter, read_window

pytestmark = pytest.mark.unit


def _write(writer: SegmentWriter, segment: int) -> None:
    """One segment of ten rows whose x are 10*segment .. 10*segment+9."""
    writer.append({"x": np.arange(segment * 10, segment * 10 + 10, dtype=np.float64)}, np.zeros(10))
    writer.flush()


def _sizes(directory: Path) -> list[int]:
    return [p.stat().st_size for p in sorted(directory.glob("*.parquet"))]


def test_the_oldest_segments_go_once_the_directory_is_over_its_bytes(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    with SegmentWriter(str(probe), "w1", max_seconds=3600, retention_segments=None) as writer:
        _write(writer, 0)
    size = _sizes(probe)[0]
    log = tmp_path / "log"
    budget = 3 * size + size // 2
    with SegmentWriter(
        str(log), "w1", max_seconds=3600, retention_segments=None, retention_bytes=budget
    ) as writer:
        for segment in range(6):
            _write(writer, segment)
            assert sum(_sizes(log)) <= budget
    assert len(_sizes(log)) == 3
    assert read_window(str(log), rows=100).column("x").to_pylist() == list(
        map(float, range(30, 60))
    ), "the newest rows stay"


def test_every_writers_segments_count_against_the_budget(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "pod-a", max_seconds=3600, retention_segments=None) as a:
        for segment in range(4):
            _write(a, segment)
    size = max(_sizes(tmp_path))
    with SegmentWriter(
        str(tmp_path), "pod-b", max_seconds=3600, retention_segments=None, retention_bytes=2 * size
    ) as b:
        _write(b, 4)
    assert len(_sizes(tmp_path)) == 2
    assert sorted(read_window(str(tmp_path), rows=100).column("x").to_pylist()) == list(
        map(float, range(30, 50))
    )


def test_the_newest_segment_stays_even_when_it_alone_is_over(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600, retention_bytes=1) as writer:
        for segment in range(3):
            _write(writer, segment)
    assert len(_sizes(tmp_path)) == 1
    assert read_window(str(tmp_path), rows=100).column("x").to_pylist() == list(
        map(float, range(20, 30))
    )


def test_segments_and_bytes_bound_together(tmp_path: Path) -> None:
    with SegmentWriter(
        str(tmp_path), "w1", max_seconds=3600, retention_segments=2, retention_bytes=1 << 30
    ) as writer:
        for segment in range(5):
            _write(writer, segment)
    assert len(_sizes(tmp_path)) == 2, "the count still bounds a log far under its bytes"


def test_a_budget_below_one_byte_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention_bytes"):
        SegmentWriter(str(tmp_path), "w1", retention_bytes=0)


def test_the_chart_budget_reaches_every_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLKUBE_INFERENCE_LOG_MAX_BYTES", raising=False)
    assert OperatorConfig.from_env().inference_log_max_bytes == 512 << 20, "the default"
    monkeypatch.setenv("MLKUBE_INFERENCE_LOG_MAX_BYTES", "64Mi")
    config = OperatorConfig.from_env()
    assert config.inference_log_max_bytes == 64 << 20
    owner = Owner(kind="Deployment", name="iris", namespace="team-a", uid="uid-2")
    spec = DeploymentSpec.model_validate({"modelVersion": "iris-v1"})
    version = ModelVersionSpec.model_validate(
        {
            "model": "iris",
            "version": 1,
            "task": "classification",
            "artifact": {
                "uri": "file:///var/lib/mlkube/artifacts/team-a/iris/1",
                "sha256": "a" * 64,
            },
            "framework": {"version": "1.9.1"},
            "inputSchema": [{"name": "x", "type": "float"}],
        }
    )
    server = build_server_deployment(owner, spec, "iris-v1", version, 1, config)
    env = server["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MLKUBE_INFERENCE_LOG_MAX_BYTES", "value": str(64 << 20)} in env
    monkeypatch.setenv("MLKUBE_INFERENCE_LOG_MAX_BYTES", "")
    assert OperatorConfig.from_env().inference_log_max_bytes == 512 << 20, "the chart's empty"
    for wrong in ("64MB", "-1", "0"):
        monkeypatch.setenv("MLKUBE_INFERENCE_LOG_MAX_BYTES", wrong)
        with pytest.raises(ValueError, match="MLKUBE_INFERENCE_LOG_MAX_BYTES"):
            OperatorConfig.from_env()
