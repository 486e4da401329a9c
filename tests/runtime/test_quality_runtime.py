"""Live quality from real files: an inference log and feedback in layout.py's shape, bulk CSV
and Parquet feedback files, a key prefix of them, and the errors bad files give."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlkube.api.driftmonitor import DriftMonitorSpec
from mlkube.layout import (
    FEEDBACK_DIR,
    LOG_PREDICTION_COLUMN,
    LOG_TS_COLUMN,
)
from mlkube.runtime.inference_log import segment_name
from mlkube.runtime.quality import (
    RESULT_BYTES,
    QualityError,
    labelled_rows,
    log_versions,
    read_feedback,
    run_performance,
)
from tests.unit.test_quality import log_window

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
DAY_MS = 86_400_000


def write_segment(
    log: Path,
    version: str,
    seq: int,
    ids: list[str],
    ts: list[int],
    predictions: list[Any],
    probabilities: np.ndarray | None = None,
    classes: list[Any] | None = None,
    **features: list[Any],
) -> None:
    """One segment of `version`'s part of the log, as a server writes it."""
    directory = log / version
    directory.mkdir(parents=True, exist_ok=True)
    name = segment_name(max(ts) / 1000, "pod-a", seq)
    table = log_window(ids, predictions, ts, probabilities, classes, version, **features)
    pq.write_table(table, directory / name)


def write_feedback_segment(
    log: Path, seq: int, ids: list[str], values: list[Any], ts: list[int], **outcomes: list[float]
) -> None:
    directory = log / FEEDBACK_DIR
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "requestId": pa.array(ids, pa.string()),
            "label": pa.array(values),
            LOG_TS_COLUMN: pa.array(ts, pa.int64()),
            **{k: pa.array(v, pa.float64()) for k, v in outcomes.items()},
        }
    )
    pq.write_table(table, directory / segment_name(max(ts) / 1000, "pod-a", seq))


def drift_spec(**performance: Any) -> DriftMonitorSpec:
    return DriftMonitorSpec.model_validate(
        {"deployment": "churn", "window": {"rows": 10_000}, "performance": performance}
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """v1 (retired) and v2 (served): 300 rows each, classes "0"/"1" logged as strings with
    probabilities, a `plan` column to slice by."""
    root = tmp_path / "ns" / "_inference" / "churn"
    rng = np.random.default_rng(0)
    old = NOW_MS - 3 * DAY_MS
    for version in ("v1", "v2"):
        for seq in range(3):
            ids = [f"{version}-{seq}-{i}" for i in range(100)]
            p = np.round(rng.random(100), 3)
            write_segment(
                root,
                version,
                seq,
                ids,
                [old + seq * 1000 + i for i in range(100)],
                np.where(p >= 0.5, "1", "0").tolist(),
                np.c_[1 - p, p],
                ["0", "1"],
                plan=rng.choice(["basic", "pro"], 100).tolist(),
                tenure=rng.random(100).tolist(),
            )
    return root


def test_run_performance_joins_segments_and_bulk_files(log: Path, tmp_path: Path) -> None:
    # posted labels for v2's first 150 rows: right for the first 120, wrong for the next 30
    v2 = [f"v2-{seq}-{i}" for seq in range(3) for i in range(100)]
    table = pq.read_table(log / "v2")
    predictions = table.column(LOG_PREDICTION_COLUMN).to_pylist()
    truth = [int(p) if n < 120 else 1 - int(p) for n, p in enumerate(predictions[:150])]
    posted_ts = [NOW_MS - 3 * DAY_MS + 60_000] * 150
    write_feedback_segment(
        log, 0, v2[:150], [str(t) for t in truth], posted_ts, revenue=[1.0] * 150
    )
    # a warehouse export: int64 labels (the classes are text), for v2 rows 150-199, a retired
    # v1 row and an id nothing logged
    bulk = tmp_path / "warehouse" / "labels-2023-11.csv"
    bulk.parent.mkdir()
    bulk_rows = [
        f"{rid},{int(p)},2.5" for rid, p in zip(v2[150:200], predictions[150:200], strict=True)
    ]
    bulk.write_text("requestId,label,revenue\n" + "\n".join([*bulk_rows, "v1-0-0,1,0", "nope,0,0"]))
    report = run_performance(
        drift_spec(
            minLabelledRows=100,
            maxDrop="0.05",
            sliceBy="plan",
            outcomes=[{"name": "revenue"}],
            feedbackUris=[str(tmp_path / "warehouse" / "labels-")],
        ),
        f"file://{log}",
        "v2",
        task="classification",
        classes=["0", "1"],
        offline_metrics={"accuracy": 0.99, "f1": 0.99},
        now=NOW,
    )
    assert report.counts.rows == 300
    assert report.counts.labelled == 200
    assert report.counts.unknown_ids == 1  # v1-0-0 is a retired version's row, not unknown
    assert report.counts.pending == 0
    assert report.metrics["accuracy"] == pytest.approx(170 / 200)
    assert report.verdict == "Degraded"
    assert report.outcomes["revenue"] == ("Sum", 150 + 2.5 * 50, 200)
    assert report.slices is not None and {s.value for s in report.slices.slices} == {
        "basic",
        "pro",
    }
    assert report.estimated["accuracy"] is not None
    result = report.to_result()
    text = json.dumps(result, separators=(",", ":"))
    assert len(text.encode()) <= RESULT_BYTES
    assert result["verdict"] == "Degraded"
    assert result["unknownIds"] == 1
    assert set(result["estimated"]) == {"accuracy", "f1", "rocAuc"}


def test_log_versions_skip_the_feedback_directory(log: Path) -> None:
    write_feedback_segment(log, 0, ["x"], ["1"], [NOW_MS])
    assert log_versions(f"file://{log}") == ["v1", "v2"]
    assert log_versions(f"file://{log}/missing") == []


def test_bulk_parquet_files_under_a_directory_and_the_last_write_wins(tmp_path: Path) -> None:
    directory = tmp_path / "labels"
    (directory / "2023" / "11").mkdir(parents=True)
    pq.write_table(
        pa.table({"requestId": ["a", "b"], "label": ["x", "x"], "clicks": [1, 2]}),
        directory / "2023" / "11" / "01.parquet",
    )
    pq.write_table(
        pa.table({"requestId": ["a"], "label": ["y"], "clicks": [5]}),
        directory / "2023" / "11" / "02.parquet",
    )
    (directory / "README.txt").write_text("not feedback")
    feedback = read_feedback(None, [str(directory)], ["clicks"])
    rows = {r["requestId"]: r for r in feedback.table.to_pylist()}
    assert rows["a"]["label"] == "y"
    assert rows["a"]["clicks"] == 5.0
    assert feedback.duplicates == 1
    assert [Path(f).name for f in feedback.files] == ["01.parquet", "02.parquet"]


def test_a_posted_label_beats_a_bulk_one_and_types_are_unified(tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_feedback_segment(log, 0, ["a"], ["1"], [NOW_MS])
    bulk = tmp_path / "bulk.csv"
    bulk.write_text("requestId,label\na,0\nb,1\n")
    feedback = read_feedback(f"file://{log / FEEDBACK_DIR}", [str(bulk)])
    assert feedback.table.column("label").type == pa.string()
    assert dict(
        zip(
            feedback.table.column("requestId").to_pylist(),
            feedback.table.column("label").to_pylist(),
            strict=True,
        )
    ) == {"a": "1", "b": "1"}


def test_numeric_request_ids_in_a_csv_stay_text(tmp_path: Path) -> None:
    bulk = tmp_path / "bulk.csv"
    bulk.write_text("requestId,label\n0017,1\n")
    feedback = read_feedback(None, [str(bulk)])
    assert feedback.table.column("requestId").to_pylist() == ["0017"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,label\na,1\n", "has no 'requestId' column (columns: id, label)"),
        ("requestId,truth\na,1\n", "has no 'label' column"),
        ("requestId,label,revenue\na,1,lots\n", "outcome column 'revenue' is not numeric"),
    ],
)
def test_a_bad_csv_names_the_file_and_column(tmp_path: Path, content: str, message: str) -> None:
    bulk = tmp_path / "bad.csv"
    bulk.write_text(content)
    with pytest.raises(QualityError, match=re.escape(message)) as caught:
        read_feedback(None, [str(bulk)], ["revenue"])
    assert str(bulk) in str(caught.value)


def test_a_broken_parquet_file_and_an_empty_prefix_say_so(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(QualityError, match="is not readable CSV or Parquet"):
        read_feedback(None, [str(broken)])
    with pytest.raises(QualityError, match="matches no CSV or Parquet file"):
        read_feedback(None, [str(tmp_path / "nothing-")])


def test_a_feedback_segment_without_its_time_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / FEEDBACK_DIR
    directory.mkdir()
    pq.write_table(pa.table({"requestId": ["a"], "label": ["1"]}), directory / "x.parquet")
    with pytest.raises(QualityError, match=f"has no '{LOG_TS_COLUMN}' column"):
        read_feedback(str(directory))


def test_labelled_rows_for_retraining_with_lineage(log: Path, tmp_path: Path) -> None:
    write_feedback_segment(
        log,
        0,
        ["v1-0-0", "v1-0-1", "v2-2-99"],
        ["1", "0", "1"],
        [NOW_MS, NOW_MS, NOW_MS],
    )
    bulk = tmp_path / "bulk.parquet"
    pq.write_table(pa.table({"requestId": ["v2-0-5"], "label": [0]}), bulk)
    frame, lineage = labelled_rows(
        f"file://{log}", ["tenure", "plan"], "churned", feedback_uris=[str(bulk)], now=NOW
    )
    assert list(frame.columns) == ["tenure", "plan", "churned"]
    assert frame["churned"].tolist() == ["1", "0", "0", "1"]  # oldest first, as predictions' type
    assert lineage["rows"] == 4
    assert lineage["versions"]["v1"]["rows"] == 2
    assert lineage["versions"]["v2"]["rows"] == 2
    assert lineage["versions"]["v2"]["lastTs"] > lineage["versions"]["v2"]["firstTs"]
    assert len(lineage["feedbackFiles"]) == 2
    only_v2, _ = labelled_rows(f"file://{log}", ["tenure"], "y", model_versions=["v2"], rows=100)
    assert len(only_v2) == 1  # the last 100 rows of v2 hold v2-2-99 only
    none, lineage = labelled_rows(f"file://{log}", ["not-logged"], "y")
    assert none.empty
    assert lineage["versions"] == {}
