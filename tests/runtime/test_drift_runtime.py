from __future__ import annotations

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
from mlkube.runtime.cli import load_spec
from mlkube.runtime.drift import detect_drift, run_drift
from mlkube.runtime.inference_log import SegmentWriter

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
