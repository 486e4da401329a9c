from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow.fs import LocalFileSystem

from mlkube.layout import (
    LOG_CLASSES_METADATA,
    LOG_MODEL_VERSION_COLUMN,
    LOG_PROBABILITIES_COLUMN,
    LOG_REQUEST_ID_COLUMN,
)
from mlkube.runtime.inference_log import (
    PREDICTION_COLUMN,
    TS_COLUMN,
    SegmentWriter,
    Values,
    _read_segments,
    count_rows,
    read_window,
    segment_name,
    segment_time,
)

pytestmark = pytest.mark.unit


def _segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.parquet"))


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _batch(start: int, rows: int) -> dict[str, Values]:
    values = np.arange(start, start + rows, dtype=np.float64)
    return {"x": values, "colour": ["red" if v % 2 else "blue" for v in range(rows)]}


def test_segment_names_sort_by_time_and_parse_back() -> None:
    early = segment_name(1_700_000_000.25, "pod-a-7f", 12)
    late = segment_name(1_700_000_001.0, "pod-a-7f", 3)
    assert early < late
    assert early == "20231114T221320250000-pod-a-7f-0000000012.parquet"
    assert segment_time(early) == pytest.approx(1_700_000_000.25)


def test_flushes_by_rows_off_the_request_path(tmp_path: Path) -> None:
    writer = SegmentWriter(str(tmp_path), "w1", max_rows=100, max_seconds=3600)
    try:
        writer.append(_batch(0, 60), np.zeros(60))
        time.sleep(0.1)
        assert _segments(tmp_path) == []
        writer.append(_batch(60, 60), np.ones(60))
        _wait_for(lambda: len(_segments(tmp_path)) == 1)
        table = pq.read_table(tmp_path / _segments(tmp_path)[0])
        assert table.column_names == ["x", "colour", PREDICTION_COLUMN, TS_COLUMN]
        assert table.num_rows == 120
        assert str(table.schema.field(TS_COLUMN).type) == "int64"
    finally:
        writer.close()


def test_flushes_by_age(tmp_path: Path) -> None:
    writer = SegmentWriter(str(tmp_path), "w1", max_rows=1_000_000, max_seconds=0.2)
    try:
        writer.append(_batch(0, 5), ["a"] * 5)
        _wait_for(lambda: len(_segments(tmp_path)) == 1, timeout=5)
        assert count_rows(str(tmp_path)) == 5
    finally:
        writer.close()


def test_close_flushes_the_rest(tmp_path: Path) -> None:
    with SegmentWriter(f"file://{tmp_path}", "w1", max_rows=1000, max_seconds=3600) as writer:
        writer.append(_batch(0, 7), np.zeros(7))
    assert count_rows(str(tmp_path)) == 7
    with pytest.raises(RuntimeError):
        writer.append(_batch(0, 1), [0])


def test_retention_deletes_the_oldest_segments(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600, retention_segments=3) as writer:
        for i in range(6):
            writer.append(_batch(i * 10, 10), np.zeros(10))
            writer.flush()
    assert len(_segments(tmp_path)) == 3
    assert read_window(str(tmp_path), rows=100).column("x").to_pylist() == list(
        map(float, range(30, 60))
    )


def test_window_by_rows_opens_only_the_newest_segments(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600, retention_segments=None) as writer:
        for i in range(5):
            writer.append(_batch(i * 100, 100), np.full(100, i))
            writer.flush()
    for old in _segments(tmp_path)[:3]:
        (tmp_path / old).write_bytes(b"not parquet: must never be opened")
    table = read_window(str(tmp_path), rows=150, columns=["x", PREDICTION_COLUMN])
    assert table.column_names == ["x", PREDICTION_COLUMN]
    assert table.column("x").to_pylist() == list(map(float, range(350, 500)))


def test_window_by_seconds_uses_names_and_ts(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append(_batch(0, 10), np.zeros(10))
        writer.flush()
        time.sleep(0.3)
        writer.append(_batch(10, 10), np.zeros(10))
        writer.flush()
    newest = segment_time(_segments(tmp_path)[-1])
    table = read_window(str(tmp_path), seconds=1, now=newest + 0.9)
    assert table.column("x").to_pylist() == list(map(float, range(10, 20)))
    assert read_window(str(tmp_path), seconds=10, now=newest).num_rows == 20
    assert read_window(str(tmp_path), seconds=1, now=newest + 5).num_rows == 0


def test_window_of_an_empty_log_is_empty(tmp_path: Path) -> None:
    assert read_window(str(tmp_path / "missing"), rows=10, columns=["x"]).num_rows == 0
    assert count_rows(str(tmp_path / "missing")) == 0


def test_several_writers_interleave_in_time_order(tmp_path: Path) -> None:
    a = SegmentWriter(str(tmp_path), "pod-a", max_seconds=3600)
    b = SegmentWriter(str(tmp_path), "pod-b", max_seconds=3600)
    for i in range(4):
        writer = a if i % 2 else b
        writer.append(_batch(i * 10, 10), np.zeros(10))
        time.sleep(0.002)
        writer.flush()
    a.close()
    b.close()
    ts = read_window(str(tmp_path), rows=40).column(TS_COLUMN).to_numpy()
    assert np.all(np.diff(ts) >= 0)
    assert read_window(str(tmp_path), rows=40).column("x").to_pylist() == list(
        map(float, range(40))
    )


def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def read_continuously() -> None:
        while not stop.is_set():
            try:
                table = read_window(str(tmp_path), rows=1_000_000)
                seen.append(table.num_rows)
            except BaseException as e:
                errors.append(e)
                return

    reader = threading.Thread(target=read_continuously)
    reader.start()
    with SegmentWriter(str(tmp_path), "w1", max_rows=2000, max_seconds=3600) as writer:
        for i in range(40):
            writer.append(_batch(i * 2000, 2000), np.zeros(2000))
            time.sleep(0.005)
    stop.set()
    reader.join()
    assert errors == []
    assert all(rows % 2000 == 0 for rows in seen)
    assert count_rows(str(tmp_path)) == 80_000


def test_segments_whose_types_differ_are_promoted(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({"x": np.arange(3), "colour": ["a", "b", "c"]}, [0, 1, 0])
        writer.flush()
        writer.append({"x": np.array([0.5]), "colour": ["d"]}, [1])
    table = read_window(str(tmp_path), rows=10)
    assert table.column("x").to_pylist() == [0.0, 1.0, 2.0, 0.5]
    assert table.column("colour").to_pylist() == ["a", "b", "c", "d"]


def test_a_segment_deleted_after_listing_is_skipped(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({"x": np.arange(3.0)}, [0, 1, 0])
    existing = str(tmp_path / _segments(tmp_path)[0])
    table = _read_segments(LocalFileSystem(), [str(tmp_path / "gone.parquet"), existing], None)
    assert table is not None and table.column("x").to_pylist() == [0.0, 1.0, 2.0]


def test_feature_names_never_collide_with_the_logs_own_columns(tmp_path: Path) -> None:
    """Features named like the log's columns keep their values; reserved names are refused."""
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({"ts": np.arange(3.0), "prediction": np.full(3, 7.0)}, ["a", "b", "c"])
        with pytest.raises(ValueError, match="_mlkube_ts"):
            writer.append({TS_COLUMN: np.zeros(1)}, ["a"])
    table = read_window(str(tmp_path), rows=3)
    assert table.column("ts").to_pylist() == [0.0, 1.0, 2.0]
    assert table.column("prediction").to_pylist() == [7.0, 7.0, 7.0]
    assert table.column(PREDICTION_COLUMN).to_pylist() == ["a", "b", "c"]


def test_batches_with_different_columns_are_still_written(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({"x": np.array([1.0])}, ["a"])
        writer.append({"x": np.array([2.0]), "y": np.array([3.0])}, ["b"])
    table = read_window(str(tmp_path), rows=2)
    assert table.column("y").to_pylist() == [None, 3.0]


def test_rows_keep_their_order_when_columns_come_and_go(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({"x": np.array([1.0, 2.0])}, ["a", "b"])
        writer.append({"x": np.array([3.0]), "y": np.array([9.0])}, ["c"])
        writer.append({"x": np.array([4.0])}, ["d"])
    table = read_window(str(tmp_path), rows=4)
    assert table.column("x").to_pylist() == [1.0, 2.0, 3.0, 4.0]
    assert table.column("y").to_pylist() == [None, None, 9.0, None]
    assert table.column(PREDICTION_COLUMN).to_pylist() == ["a", "b", "c", "d"]


def test_many_small_batches_keep_every_row_in_order(tmp_path: Path) -> None:
    """One-row requests fill the buffer's blocks; nothing is lost or reordered."""
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        for i in range(3000):
            writer.append({"x": np.array([float(i)]), "colour": [f"c{i}"]}, np.array([i % 3]))
    table = read_window(str(tmp_path), rows=3000)
    assert table.column("x").to_pylist() == [float(i) for i in range(3000)]
    assert table.column("colour").to_pylist()[-2:] == ["c2998", "c2999"]
    assert table.column(PREDICTION_COLUMN).to_pylist()[:4] == [0, 1, 2, 0]


def test_a_full_buffer_starts_new_blocks_while_the_writer_is_late(tmp_path: Path) -> None:
    """Blocks take twice a segment's rows; past that, rows go into new blocks (never a copy of
    the full ones on the request path), and the segment still has every row in order."""
    writer = SegmentWriter(str(tmp_path), "w1", max_rows=10, max_seconds=3600)
    with writer._write_lock:  # the writer thread is late: it waits here to write
        for i in range(95):
            writer.append({"x": np.array([float(i)])}, np.array([i]), f"r{i}")
        runs = len(writer._buffer.runs)
    writer.close()
    table = read_window(str(tmp_path), rows=95)
    assert runs >= 3  # at most 20 rows a run
    assert table.column("x").to_pylist() == [float(i) for i in range(95)]
    assert table.column(LOG_REQUEST_ID_COLUMN).to_pylist()[-2:] == ["r93-0", "r94-0"]


def test_appended_values_are_copied(tmp_path: Path) -> None:
    """A caller may reuse its arrays after `append`: the log keeps what they held then."""
    values = np.array([1.0, 2.0])
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({"x": values}, np.array([0, 1]))
        values[:] = -1.0
    assert read_window(str(tmp_path), rows=2).column("x").to_pylist() == [1.0, 2.0]


def test_a_column_whose_length_differs_from_the_predictions_is_refused(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        with pytest.raises(ValueError, match="'x' has 1 values for 3 rows"):
            writer.append({"x": np.array([1.0])}, np.array([0, 1, 2]))
        writer.append({"x": np.array([5.0])}, np.array([1]))
    assert read_window(str(tmp_path), rows=5).column("x").to_pylist() == [5.0]


def test_a_float_matrix_under_its_column_names_is_logged_as_those_columns(
    tmp_path: Path,
) -> None:
    """A request's (rows, columns) matrix is one copy into the log, read back column by column."""
    columns = ("sepal_length", "petal_width")
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({columns: np.array([[5.1, 0.2], [6.3, 1.8]])}, np.array([0, 2]))
        writer.append({columns: np.array([[4.9, 0.1]])}, np.array([0]))
    table = read_window(str(tmp_path), rows=3)
    assert table.column_names == [*columns, PREDICTION_COLUMN, TS_COLUMN]
    assert table.column("sepal_length").to_pylist() == [5.1, 6.3, 4.9]
    assert table.column("petal_width").to_pylist() == [0.2, 1.8, 0.1]


def test_values_not_shaped_as_their_key_says_are_refused(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        with pytest.raises(ValueError, match=r"\('a', 'b'\) need an array of shape \(rows, 2\)"):
            writer.append({("a", "b"): np.zeros((1, 3))}, np.array([0]))
        with pytest.raises(ValueError, match="'x' needs one value per row"):
            writer.append({"x": np.zeros((1, 2))}, np.array([0]))
        with pytest.raises(ValueError, match="_mlkube_ts"):
            writer.append({("a", TS_COLUMN): np.zeros((1, 2))}, np.array([0]))
        with pytest.raises(ValueError, match="column 'a' is given twice"):
            writer.append({("a", "b"): np.zeros((1, 2)), "a": np.zeros(1)}, np.array([0]))


def test_lists_under_names_tuple_share_one_run(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({("a", "b"): [[1.0, 2.0]]}, [0])
        writer.append({("a", "b"): [[3.0, 4.0]]}, [1])
        assert len(writer._buffer.runs) == 1
    assert read_window(str(tmp_path), rows=2).column("b").to_pylist() == [2.0, 4.0]


def test_every_row_of_a_batch_has_the_batchs_time(tmp_path: Path) -> None:
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        before = time.time()
        writer.append({"x": np.arange(3.0)}, np.zeros(3))
        time.sleep(0.02)
        writer.append({"x": np.arange(2.0)}, np.zeros(2))
    ts = read_window(str(tmp_path), rows=5).column(TS_COLUMN).to_pylist()
    assert ts[0] == ts[1] == ts[2] < ts[3] == ts[4]
    assert ts[0] >= int(before * 1000)


def test_request_ids_are_made_per_row_by_the_writer(tmp_path: Path) -> None:
    """A request's id is kept once; the writer makes ``<id>-<row>``, row counting from 0."""
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({"x": np.arange(3.0)}, np.zeros(3), "order-17")
        writer.append({"x": np.arange(1.0)}, np.zeros(1), "basket-9")
        writer.append({"x": np.arange(2.0)}, np.zeros(2), "order-17")  # ids need not be unique
    table = read_window(str(tmp_path), rows=6)
    assert table.column(LOG_REQUEST_ID_COLUMN).to_pylist() == [
        "order-17-0", "order-17-1", "order-17-2", "basket-9-0", "order-17-0", "order-17-1",
    ]  # fmt: skip


def test_request_ids_of_a_request_larger_than_the_kept_row_endings_run_on(tmp_path: Path) -> None:
    """Row endings (``-<row>``) are made once for 1,024 rows; a larger request gets more."""
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({"x": np.arange(3000.0)}, np.zeros(3000), "big")
        writer.append({"x": np.arange(2.0)}, np.zeros(2), "small")
    ids = read_window(str(tmp_path), rows=3002).column(LOG_REQUEST_ID_COLUMN).to_pylist()
    assert ids[:2] == ["big-0", "big-1"] and ids[1023:1025] == ["big-1023", "big-1024"]
    assert ids[2999:] == ["big-2999", "small-0", "small-1"]


def test_a_segment_is_never_seen_half_written(tmp_path: Path) -> None:
    """Written under a temporary name and renamed: only whole segments end in .parquet."""
    with SegmentWriter(str(tmp_path / "new" / "dir"), "w1", max_seconds=3600) as writer:
        writer.append({"x": np.arange(3.0)}, np.zeros(3), "r")
    names = [p.name for p in (tmp_path / "new" / "dir").iterdir()]
    assert len(names) == 1 and names[0].endswith(".parquet")
    assert pq.read_table(tmp_path / "new" / "dir" / names[0]).num_rows == 3


def test_probabilities_are_a_fixed_size_list_per_row(tmp_path: Path) -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append({"x": np.arange(2.0)}, np.array([0, 2]), "r", probabilities)
        for i in range(1500):  # enough rows to grow the blocks, which keeps them row after row
            writer.append({"x": np.array([float(i)])}, np.array([1]), f"s{i}", probabilities[:1])
    table = pq.read_table(tmp_path / _segments(tmp_path)[0])
    column = table.column(LOG_PROBABILITIES_COLUMN)
    assert column.type == pa.list_(pa.float64(), 3)
    assert column.to_pylist()[:3] == [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]]
    assert column.to_pylist()[-1] == [0.7, 0.2, 0.1]


def test_constants_and_metadata_go_into_every_segment(tmp_path: Path) -> None:
    with SegmentWriter(
        str(tmp_path),
        "w1",
        max_seconds=3600,
        constants={LOG_MODEL_VERSION_COLUMN: "iris-3"},
        metadata={LOG_CLASSES_METADATA: b'["setosa", "versicolor"]'},
    ) as writer:
        for _ in range(2):
            writer.append({"x": np.arange(2.0)}, np.zeros(2))
            writer.flush()
    for name in _segments(tmp_path):
        table = pq.read_table(tmp_path / name)
        assert table.column(LOG_MODEL_VERSION_COLUMN).to_pylist() == ["iris-3", "iris-3"]
        assert table.schema.metadata[LOG_CLASSES_METADATA] == b'["setosa", "versicolor"]'


def test_rows_without_predictions_are_written_as_given_with_their_time(tmp_path: Path) -> None:
    """The feedback log: ids, labels and outcomes; an outcome a row does not give is null."""
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        first: dict[str, Values] = {"requestId": ["a-0", "b-0"], "label": np.array([2, 0])}
        second: dict[str, Values] = {
            "requestId": ["c-0", "d-0"],
            "label": np.array([1, 1]),
            "revenue": [12.5, None],
        }
        writer.append_rows(first)
        writer.append_rows(second)
        with pytest.raises(ValueError, match="at least one column"):
            writer.append_rows({})
        with pytest.raises(ValueError, match="_mlkube_ts"):
            writer.append_rows({TS_COLUMN: np.zeros(1)})
    table = read_window(str(tmp_path), rows=4)
    assert table.column_names == ["requestId", "label", TS_COLUMN, "revenue"]
    assert table.column("label").to_pylist() == [2, 0, 1, 1]
    assert table.schema.field("revenue").type == pa.float64()
    assert table.column("revenue").to_pylist() == [None, None, 12.5, None]
