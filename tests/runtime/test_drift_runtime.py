from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.datasets import load_breast_cancer

from mlkube.api.driftmonitor import DriftMonitorSpec, Window
from mlkube.runtime.cli import load_spec, main
from mlkube.runtime.drift import detect_drift, run_drift
from mlkube.runtime.inference_log import SegmentWriter, count_rows
from mlkube.runtime.log_window import read_version_window
from mlkube.runtime.outcome import EXIT_PERMANENT

pytestmark = pytest.mark.runtime

SHIFTED = ["mean radius", "worst texture", "mean smoothness"]


def _split() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Breast-cancer measurements plus the diagnosis as a categorical column, split in halves."""
    data = load_breast_cancer(as_frame=True)
    frame = data.data.copy()
    frame["diagnosis"] = np.where(data.target == 1, "benign", "malignant")
    order = np.random.default_rng(20).permutation(len(frame))
    half = len(frame) // 2
    return (
        frame.iloc[order[:half]].reset_index(drop=True),
        frame.iloc[order[half:]].reset_index(drop=True),
    )


def _shifted(reference: pd.DataFrame, held_out: pd.DataFrame) -> pd.DataFrame:
    shifted = held_out.copy()
    for name in SHIFTED:
        shifted[name] = shifted[name] + reference[name].std()
    return shifted


def _spec(**fields: object) -> DriftMonitorSpec:
    return DriftMonitorSpec.model_validate({"deployment": "cancer", **fields})


def test_held_out_sample_of_the_same_data_does_not_drift() -> None:
    reference, held_out = _split()
    report = detect_drift(reference, held_out, _spec())
    assert len(report.columns) == 31
    assert report.drifted_columns == []
    assert report.verdict == "NoDrift"
    assert {c.kind for c in report.columns if c.name == "diagnosis"} == {"Categorical"}


def test_exactly_the_shifted_columns_are_flagged() -> None:
    reference, held_out = _split()
    shifted = _shifted(reference, held_out)
    report = detect_drift(reference, shifted, _spec())
    assert sorted(report.drifted_columns) == sorted(SHIFTED)
    assert report.drift_share == pytest.approx(3 / 31)
    assert report.verdict == "NoDrift"  # 3 of 31 is under the default share of 0.5
    assert detect_drift(reference, shifted, _spec(driftShare="0.05")).verdict == "Drift"


def test_round_trip_through_the_inference_log(tmp_path: Path) -> None:
    reference, held_out = _split()
    shifted = _shifted(reference, held_out)
    reference_uri = str(tmp_path / "model" / "reference.parquet")
    (tmp_path / "model").mkdir()
    pq.write_table(pa.Table.from_pandas(reference, preserve_index=False), reference_uri)
    log_uri = f"file://{tmp_path}/_inference/cancer"
    with SegmentWriter(log_uri, "pod-0", max_rows=50, max_seconds=60) as writer:
        for start in range(0, len(shifted), 40):
            batch = shifted.iloc[start : start + 40]
            writer.append(
                {name: batch[name].to_numpy() for name in batch.columns},
                (batch["diagnosis"] == "benign").astype(int).to_numpy(),
            )
    spec = _spec(window=Window(rows=10_000))
    report = run_drift(spec, reference_uri, log_uri)
    assert report.rows == len(shifted)
    assert sorted(report.drifted_columns) == sorted(SHIFTED)
    assert report == detect_drift(reference, shifted, spec)

    column_types = {name: "float" for name in SHIFTED} | {"diagnosis": "string"}
    typed = run_drift(spec, reference_uri, log_uri, column_types=column_types)
    assert [c.name for c in typed.columns] == [*SHIFTED, "diagnosis"]
    assert typed.drifted_columns == SHIFTED

    last_hundred = run_drift(_spec(window=Window(rows=100)), reference_uri, log_uri)
    assert last_hundred.rows == 100
    assert run_drift(_spec(window=Window(rows=50)), reference_uri, log_uri).verdict == (
        "InsufficientData"
    )


def test_evidently_mode_raises_a_false_alarm_on_the_held_out_half() -> None:
    """With a 284-row reference Evidently tests each column at p < 0.05 with no correction, so
    one of 31 columns of the same data is 'drifted'; Bonferroni plus a distance keeps it quiet."""
    reference, held_out = _split()
    evidently = detect_drift(reference, held_out, _spec(method="Evidently"))
    assert evidently.drifted_columns == ["mean smoothness"]
    assert detect_drift(reference, held_out, _spec()).drifted_columns == []


@pytest.mark.parametrize(
    "document",
    [
        {"apiVersion": "mlkube.io/v1alpha1", "kind": "DriftMonitor", "spec": {"deployment": "d"}},
        {"spec": {"deployment": "d"}},
        {"deployment": "d"},
    ],
    ids=["manifest", "bare-spec-mapping", "spec-fields"],
)
def test_a_spec_file_may_be_a_manifest_or_its_spec(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(document))
    assert load_spec(str(path), DriftMonitorSpec).deployment == "d"


# --- windows per model version -----------------------------------------------------------------


def _log(uri: str, frame: pd.DataFrame, writer: str = "pod-0", segment_rows: int = 100) -> None:
    """`frame` logged as a server logs it, a segment per `segment_rows` rows."""
    with SegmentWriter(uri, writer, max_rows=segment_rows, max_seconds=60) as log:
        for start in range(0, len(frame), segment_rows):
            batch = frame.iloc[start : start + segment_rows]
            log.append(
                {name: batch[name].to_numpy() for name in batch.columns}, np.zeros(len(batch))
            )
            log.flush()


def _canary(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """The stable version's two inputs plus the column a canary added."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(size=rows),
            "b": rng.uniform(size=rows),
            "added": rng.normal(shift, 1, size=rows),
        }
    )


def _reference(tmp_path: Path, frame: pd.DataFrame, name: str) -> str:
    uri = str(tmp_path / f"{name}.parquet")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), uri)
    return uri


def test_a_flat_window_spanning_two_schemas_ends_in_a_reason_not_a_traceback(
    tmp_path: Path,
) -> None:
    """A canary that added a column logged into the stable version's flat directory: the check
    of the canary's columns used to end in pyarrow's ``No match for FieldRef.Name(added)``."""
    log_uri = str(tmp_path / "log")
    _log(log_uri, _canary(400, 1)[["a", "b"]])
    _log(log_uri, _canary(400, 2), writer="canary-0")
    spec = _spec(window=Window(rows=800))
    canary_reference = _reference(tmp_path, _canary(1000, 3), "canary")
    report = run_drift(spec, canary_reference, log_uri)
    assert report.verdict == "Error"
    assert report.message is not None
    assert "column 'added' is missing from 4 of 8 segments of the window" in report.message
    assert report.rows == 800

    # the stable version's columns are in every segment: a verdict on them
    stable_reference = _reference(tmp_path, _canary(1000, 4)[["a", "b"]], "stable")
    stable = run_drift(spec, stable_reference, log_uri)
    assert stable.verdict == "NoDrift"
    assert [c.name for c in stable.columns] == ["a", "b"]


def test_each_version_is_checked_on_its_own_directory(tmp_path: Path) -> None:
    log_uri = f"file://{tmp_path}/_inference/model"
    _log(f"{log_uri}/stable-3", _canary(600, 1)[["a", "b"]])
    _log(f"{log_uri}/canary-4", _canary(300, 2, shift=1.0))
    _log(f"{log_uri}/_feedback", pd.DataFrame({"label": np.arange(50.0)}))
    spec = _spec(window=Window(rows=10_000))
    stable_reference = _reference(tmp_path, _canary(1000, 3)[["a", "b"]], "stable")
    canary_reference = _reference(tmp_path, _canary(1000, 4), "canary")

    stable = run_drift(spec, stable_reference, log_uri, model_version="stable-3")
    assert (stable.verdict, stable.rows, stable.model_version) == ("NoDrift", 600, "stable-3")
    canary = run_drift(
        _spec(window=Window(rows=10_000), driftShare="0.3"),
        canary_reference,
        log_uri,
        model_version="canary-4",
    )
    assert (canary.verdict, canary.rows, canary.drifted_columns) == ("Drift", 300, ["added"])
    assert json.loads(canary.to_json())["modelVersion"] == "canary-4"

    # without a version: the one that logged last, named in the result
    newest = run_drift(spec, canary_reference, log_uri)
    assert (newest.model_version, newest.rows) == ("canary-4", 300)
    # the stable version never logged the canary's column: a reason, not a traceback
    wrong = run_drift(spec, canary_reference, log_uri, model_version="stable-3")
    assert wrong.verdict == "Error"
    assert wrong.message == "column 'added' is missing from the inference log"
    missing = run_drift(spec, stable_reference, log_uri, model_version="canary-9")
    assert missing.verdict == "InsufficientData"
    assert (
        missing.message
        == "0 rows in the window of model version canary-9, fewer than minRows (100)"
    )
    # every version's rows count towards minNewSamples, the feedback does not
    assert count_rows(log_uri) == 900
    # quality checks read a version's window as a table
    table = read_version_window(log_uri, "canary-4", rows=250, columns=["added"])
    assert table.column_names == ["added"] and table.num_rows == 250
    assert read_version_window(log_uri, None, rows=10_000).num_rows == 300


def test_a_numeric_reference_column_logged_as_text_is_named(tmp_path: Path) -> None:
    frame = _canary(300, 1)[["a", "b"]]
    _log(str(tmp_path / "log"), frame.assign(a=frame["a"].map(str)))
    reference = _reference(tmp_path, _canary(1000, 2)[["a", "b"]], "reference")
    report = run_drift(_spec(window=Window(rows=300)), reference, str(tmp_path / "log"))
    assert report.verdict == "Error"
    assert report.message == (
        "column 'a' is numeric in the reference sample but string in the inference log"
    )


def test_a_column_whose_type_changed_within_the_version_is_named(tmp_path: Path) -> None:
    log_uri = str(tmp_path / "log" / "v1")
    frame = _canary(200, 1)[["a", "b"]]
    _log(log_uri, frame)
    _log(log_uri, frame.assign(b=frame["b"].map(lambda v: f"{v:.2f}")))
    reference = _reference(tmp_path, _canary(1000, 2)[["a", "b"]], "reference")
    report = run_drift(_spec(window=Window(rows=400)), reference, str(tmp_path / "log"), None, "v1")
    assert report.verdict == "Error"
    assert report.message is not None
    assert report.message.startswith("column 'b' is numeric in segment ")
    assert "but string in" in report.message


def test_the_drift_command_reads_the_watched_version_and_reports_it(tmp_path: Path) -> None:
    log_uri = str(tmp_path / "log")
    _log(f"{log_uri}/v1", _canary(300, 1)[["a", "b"]])
    _log(f"{log_uri}/v2", _canary(200, 2))
    spec_file = tmp_path / "monitor.yaml"
    spec_file.write_text(yaml.safe_dump({"deployment": "d", "window": {"rows": 1000}}))
    reference = _reference(tmp_path, _canary(1000, 3), "canary")
    result_file = tmp_path / "result.json"
    arguments = ["drift", "--spec", str(spec_file), "--reference", reference, "--log", log_uri]
    assert main([*arguments, "--model-version", "v2", "--result-file", str(result_file)]) == 0
    result = json.loads(result_file.read_text())
    assert (result["verdict"], result["rows"], result["modelVersion"]) == ("NoDrift", 200, "v2")
    assert result["loggedRows"] == 500

    assert main([*arguments, "--model-version", "v1", "--result-file", str(result_file)]) == (
        EXIT_PERMANENT
    )
    result = json.loads(result_file.read_text())
    assert result["verdict"] == "Error" and result["modelVersion"] == "v1"
    assert result["message"] == "column 'added' is missing from the inference log"
    assert len(result_file.read_bytes()) <= 4096
