"""`mlkube-runtime verify` as the operator's verify Job runs it: every file a server or a drift
check reads is there and matches the digest the ModelVersion records (item 9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.runtime.outcome import EXIT_PERMANENT
from mlkube.runtime.train import TrainRequest, train

pytestmark = pytest.mark.runtime


@pytest.fixture
def version(tmp_path: Path) -> dict[str, Any]:
    spec = TrainingJobSpec.model_validate(
        {"model": "iris", "dataset": {"uri": "builtin:iris"},
         "estimator": {"className": "sklearn.tree.DecisionTreeClassifier"}}
    )  # fmt: skip
    return train(TrainRequest(spec=spec, artifact_root=str(tmp_path), namespace="ns", version=1))


def verify(version: dict[str, Any], with_files: bool = True) -> tuple[int, dict[str, Any]]:
    """The arguments build_verify_job gives, from what the ModelVersion records."""
    files = [a for n, d in version["files"].items() for a in ("--file", f"{n}={d}")]
    done = subprocess.run(
        [sys.executable, "-m", "mlkube.runtime.cli", "verify", "--uri", version["artifactUri"],
         "--sha256", version["sha256"], *(files if with_files else [])],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout)


def directory(version: dict[str, Any]) -> Path:
    return Path(version["artifactUri"].removeprefix("file://"))


def test_a_trained_version_verifies_with_the_digest_of_every_file(version: dict[str, Any]) -> None:
    assert set(version["files"]) >= {"schema.json", "reference.parquet"}
    code, result = verify(version)
    assert (code, result["status"]) == (0, "Verified")


def test_a_version_without_its_schema_fails_even_when_no_digests_are_recorded(
    version: dict[str, Any],
) -> None:
    """The bug: a missing schema.json passed, and the server then crash-looped."""
    (directory(version) / "schema.json").unlink()
    code, result = verify(version, with_files=False)
    assert (code, result["reason"]) == (EXIT_PERMANENT, "ArtifactNotFound")
    assert "schema.json does not exist" in result["message"]


def test_a_changed_reference_sample_is_a_digest_mismatch_naming_the_file(
    version: dict[str, Any],
) -> None:
    reference = directory(version) / "reference.parquet"
    reference.write_bytes(reference.read_bytes() + b"\0")
    code, result = verify(version)
    assert (code, result["reason"]) == (EXIT_PERMANENT, "DigestMismatch")
    assert "reference.parquet does not match" in result["message"]
    assert version["files"]["reference.parquet"] in result["message"]  # the recorded one only


def test_a_schema_no_server_can_read_is_refused(version: dict[str, Any]) -> None:
    (directory(version) / "schema.json").write_text('{"task": "classification"}')
    code, result = verify(version, with_files=False)
    assert (code, result["reason"]) == (EXIT_PERMANENT, "InvalidArtifact")
