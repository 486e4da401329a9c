"""The inference log: Parquet segments a server appends to and a drift check reads back.

A log is a directory URI (any fsspec backend: ``file://``, ``s3://``) holding segments named
``<UTC yyyymmddTHHMMSSffffff>-<writer id>-<seq>.parquet``. The timestamp is the append time of the
segment's newest row, so names sort by time and a reader picks the segments it needs from a listing
alone. Columns: the request's feature columns, ``_mlkube_prediction``, ``_mlkube_probabilities``
(when given), ``_mlkube_ts`` (int64 epoch ms), ``_mlkube_request_id`` (when given) and the writer's
constant columns (``_mlkube_model_version``); no feature name may start with ``_mlkube_``, so the
log's own columns never collide (``mlkube.layout`` names them). The same writer stores the labels
posted to ``/feedback`` (`SegmentWriter.append_rows`: rows without predictions).

Several writers (one per serving pod) may share a directory; their segments interleave by name.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

import fsspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from mlkube.layout import (
    LOG_PREDICTION_COLUMN,
    LOG_PROBABILITIES_COLUMN,
    LOG_REQUEST_ID_COLUMN,
    LOG_TS_COLUMN,
    RESERVED_COLUMN_PREFIX,
)
from mlkube.runtime.artifacts import join, store_bytes

WRITER_NICENESS = 10
PREDICTION_COLUMN = LOG_PREDICTION_COLUMN
TS_COLUMN = LOG_TS_COLUMN
SEGMENT_SUFFIX = ".parquet"
_NAME_TIME_FORMAT = "%Y%m%dT%H%M%S%f"
_NAME_TIME_LENGTH = 21

log = logging.getLogger(__name__)

Values = Sequence[Any] | npt.NDArray[Any]
"""One column of a logged batch, a numpy array or a list; or, under a tuple of column names, a
2-D array of shape (rows, len(names)) holding those columns side by side."""
Batch = Mapping[str, Values] | Mapping[tuple[str, ...], Values]
"""A logged request: each column's values by name, or several columns' under their names' tuple
(a request's float matrix is then one copy instead of one per column)."""
_Columns = Mapping[str | tuple[str, ...], Values]
"""A batch plus the writer's own columns; a 2-D array under a single name is a list column (one
fixed-size list per row: the probabilities)."""


def segment_name(newest_row_time: float, writer_id: str, seq: int) -> str:
    stamp = datetime.fromtimestamp(newest_row_time, UTC).strftime(_NAME_TIME_FORMAT)
    return f"{stamp}-{writer_id}-{seq:010d}{SEGMENT_SUFFIX}"


def segment_time(name: str) -> float:
    """Epoch seconds of a segment's newest row, read from its file name."""
    stamp = datetime.strptime(name[:_NAME_TIME_LENGTH], _NAME_TIME_FORMAT).replace(tzinfo=UTC)
    return stamp.timestamp()


_MAX_BLOCK_ROWS = 1 << 18
"""The most rows a run's first blocks take (an object column's block is written through)."""
_TYPED_KINDS = frozenset("biuf")
"""numpy kinds (bool, int, uint, float) kept in typed blocks; anything else goes in object ones."""


def _block_dtype(values: Values) -> np.dtype[Any]:
    dtype = values.dtype if isinstance(values, np.ndarray) else np.asarray(values).dtype
    return dtype if dtype.kind in _TYPED_KINDS else np.dtype(object)


def _empty_block(rows: int, key: str | tuple[str, ...], values: Values) -> npt.NDArray[Any]:
    """Room for `rows` rows of `values`: 1-D for a column; 2-D for several columns side by side,
    column after column (Fortran order), or for a list column row after row: either way Arrow
    takes the block as it is, without a copy."""
    shape = (rows, *np.shape(values)[1:])
    return np.empty(shape, _block_dtype(values), order="F" if isinstance(key, tuple) else "C")


def _same_type(values: Values, block: npt.NDArray[Any]) -> bool:
    # identity first: numpy's built-in dtypes are singletons, and this runs per request
    if isinstance(values, np.ndarray) and values.dtype is block.dtype:
        return values.shape[1:] == block.shape[1:]
    return _block_dtype(values) == block.dtype and np.shape(values)[1:] == block.shape[1:]


class _Run:
    """Consecutive batches with the same columns and types, copied into preallocated blocks as
    they come (a slice assignment per column, in C). The writer then hands each block to Arrow
    as it is: joining a segment's ~1,000 request arrays instead held the GIL for ~3 ms, a stall
    every request in flight felt (p99 +40% at 100 rows per request). Times and request ids are
    kept per batch (all its rows share them) and made per row by the writer, in Arrow's C."""

    def __init__(self, columns: _Columns, with_request_ids: bool, capacity: int) -> None:
        """`capacity`: rows the blocks take; a batch that does not fit starts the next run
        (`takes`). The writer makes it twice a segment's rows, which the run reaches only when
        the writer thread is late: memory never written takes no pages."""
        self.columns = {key: _empty_block(capacity, key, values) for key, values in columns.items()}
        self.capacity = capacity
        self.rows = 0
        self.batch_times_ms: list[int] = []
        self.batch_rows: list[int] = []
        self.batch_ids: list[str] | None = [] if with_request_ids else None

    def takes(self, columns: _Columns, with_request_ids: bool, rows: int) -> bool:
        """Whether `rows` more rows fit, and `columns` have this run's names, types and shapes,
        and request ids if its batches have them. A full run is never grown: copying its blocks
        (up to ~13 MB at 100 rows a request) stalled the event loop for milliseconds whenever
        the writer thread came late, where a new run costs an empty allocation."""
        blocks = self.columns
        if (
            self.rows + rows > self.capacity
            or columns.keys() != blocks.keys()
            or with_request_ids is (self.batch_ids is None)
        ):
            return False
        for key, values in columns.items():  # noqa: SIM110 (all() would add a generator a request)
            if not _same_type(values, blocks[key]):
                return False
        return True

    def add(
        self,
        columns: _Columns,
        rows: int,
        times_ms: list[int],
        batch_rows: list[int],
        request_ids: list[str] | None,
    ) -> None:
        """`columns`: the rows of one or more batches, `batch_rows` rows each, logged at
        `times_ms`, with `request_ids` if the run has them. ValueError when a column's length is
        not `rows` (never broadcast); the run must take them (`takes`)."""
        start, end = self.rows, self.rows + rows
        blocks = self.columns
        for key, values in columns.items():
            if len(values) != rows:
                raise ValueError(f"column {key!r} has {len(values)} values for {rows} rows")
            blocks[key][start:end] = values
        self.batch_times_ms += times_ms
        self.batch_rows += batch_rows
        if self.batch_ids is not None and request_ids is not None:
            self.batch_ids += request_ids
        self.rows = end

    def table(self) -> pa.Table:
        rows = self.rows
        columns: dict[str, pa.Array] = {}
        for key, block in self.columns.items():
            if isinstance(key, tuple):
                columns.update((name, pa.array(block[:rows, i])) for i, name in enumerate(key))
            elif block.ndim == 2:  # row after row (C order): the list values as they lie
                flat = pa.array(block[:rows].reshape(-1))
                columns[key] = pa.FixedSizeListArray.from_arrays(flat, block.shape[1])
            else:
                columns[key] = pa.array(block[:rows])
        columns[TS_COLUMN] = pa.array(
            np.repeat(np.array(self.batch_times_ms, dtype=np.int64), self.batch_rows)
        )
        if self.batch_ids is not None:
            columns[LOG_REQUEST_ID_COLUMN] = _row_ids(self.batch_ids, self.batch_rows)
        return pa.table(columns)


def _row_ids(batch_ids: list[str], batch_rows: list[int]) -> pa.Array:
    """``<id>-<row>`` for every row, row counting from 0 within its batch. The ``-<row>`` ends
    are taken from one array made once (`_row_suffixes`) rather than cast from the row numbers
    for every row of every segment."""
    counts = np.asarray(batch_rows, dtype=np.int64)
    batch_of_row = np.repeat(np.arange(len(counts)), counts)
    row_in_batch = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return pc.binary_join_element_wise(
        pa.array(batch_ids, pa.string()).take(batch_of_row),
        _row_suffixes(int(counts.max(initial=0))).take(row_in_batch),
        "",
    )


class _RowSuffixes:
    """``-0``, ``-1``, ... made once, and longer when a larger request comes (at most a
    request's row cap)."""

    def __init__(self) -> None:
        self._suffixes = self._made(1024)

    @staticmethod
    def _made(rows: int) -> pa.Array:
        return pa.array([f"-{row}" for row in range(rows)], pa.string())

    def __call__(self, rows: int) -> pa.Array:
        """At least `rows` of them."""
        if rows > len(self._suffixes):
            self._suffixes = self._made(rows)
        return self._suffixes


_row_suffixes = _RowSuffixes()


@dataclass
class _Buffer:
    runs: list[_Run] = field(default_factory=list)
    rows: int = 0
    oldest: float = 0.0
    newest: float = 0.0


class SegmentWriter:
    """Buffers logged requests in memory; a daemon thread writes them out as Parquet segments.

    `append` only takes a lock and copies the values into the buffer, so the request path never
    waits for the store. A failed write is logged and its rows dropped: losing some drift samples
    beats blocking or growing memory without bound.
    Retention counts every segment in the directory, whichever writer made it: beyond
    `retention_segments` segments or `retention_bytes` bytes the oldest go (the newest stays),
    so a flood of requests cannot fill the namespace's store.
    `constants` are columns with one value for every row the writer writes (the model version);
    `metadata` goes into every segment's Parquet schema (the classes' order of the probabilities).
    """

    def __init__(
        self,
        uri: str,
        writer_id: str,
        max_rows: int = 100_000,
        max_seconds: float = 10.0,
        retention_segments: int | None = 1000,
        constants: Mapping[str, str] | None = None,
        metadata: Mapping[bytes, bytes] | None = None,
        retention_bytes: int | None = None,
    ) -> None:
        if max_rows < 1 or max_seconds <= 0:
            raise ValueError("max_rows must be >= 1 and max_seconds > 0")
        if retention_segments is not None and retention_segments < 1:
            raise ValueError("retention_segments must be >= 1 or None")
        if retention_bytes is not None and retention_bytes < 1:
            raise ValueError("retention_bytes must be >= 1 or None")
        self.uri = uri
        self.writer_id = writer_id
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.retention_segments = retention_segments
        self.retention_bytes = retention_bytes
        self.constants = dict(constants or {})
        self.metadata = dict(metadata or {})
        self._fs, self._dir = fsspec.core.url_to_fs(join(uri))
        self._buffer = _Buffer()
        self._seq = 0
        self._closed = False
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"inference-log-{writer_id}", daemon=True
        )
        self._thread.start()

    def append(
        self,
        batch: Batch,
        predictions: Values,
        request_id: str | None = None,
        probabilities: npt.NDArray[np.float64] | None = None,
    ) -> None:
        """Queue one request's columns and predictions (ValueError for a column name starting
        with ``_mlkube_``, values not shaped as their key says, or a column whose length is not
        the predictions'). `request_id` becomes ``<request_id>-<row>`` per row; `probabilities`
        (rows, classes) a fixed-size list per row."""
        columns = {**cast(_Columns, batch), PREDICTION_COLUMN: predictions}
        if probabilities is not None:
            columns[LOG_PROBABILITIES_COLUMN] = probabilities
        rows = len(predictions)
        self._append(columns, rows, batch, [rows], None if request_id is None else [request_id])

    def append_many(self, logged: Sequence[Logged]) -> None:
        """`append` for several requests at once, in order: one copy per column for all of them,
        where a copy per request cost the request path ~10 µs. Requests whose columns differ
        (names, or whether they have probabilities and request ids) may be mixed; each run of
        alike ones is joined. ValueError as for `append`, naming the request; then none of the
        requests is queued."""
        runs: list[list[Logged]] = []
        for request in logged:
            last = runs[-1][-1] if runs else None
            if (
                last is not None
                and request.batch.keys() == last.batch.keys()
                and (request.probabilities is None) is (last.probabilities is None)
                and (request.request_id is None) is (last.request_id is None)
            ):
                runs[-1].append(request)
            else:
                runs.append([request])
        joined = [_joined(run) for run in runs]
        for columns, rows, given, batch_rows, ids, times in joined:
            self._append(columns, rows, given, batch_rows, ids, times)

    def append_rows(self, batch: Batch) -> None:
        """Queue rows that have no predictions (the labels posted to ``/feedback``); ValueError
        as for `append`, or for an empty batch."""
        if not batch:
            raise ValueError("a batch needs at least one column")
        rows = len(next(iter(batch.values())))
        self._append(cast(_Columns, batch), rows, batch, [rows], None)

    def _append(
        self,
        columns: _Columns,
        rows: int,
        given: Batch,
        batch_rows: list[int],
        request_ids: list[str] | None,
        times: list[float] | None = None,
    ) -> None:
        """`given`: the caller's own columns, checked whenever a run starts. `times`: when each
        batch was logged (epoch seconds); default now."""
        now = time.time() if times is None else times[-1]
        with self._lock:  # the condition's own lock: entered in C, where the condition's is not
            if self._closed:
                raise RuntimeError("SegmentWriter is closed")
            buffer = self._buffer
            was_empty = buffer.rows == 0
            run = buffer.runs[-1] if buffer.runs else None
            if run is None or not run.takes(columns, request_ids is not None, rows):
                _check_batch(given)  # once per run, not per request
                capacity = max(rows, min(2 * self.max_rows, _MAX_BLOCK_ROWS))
                run = _Run(columns, request_ids is not None, capacity)
                buffer.runs.append(run)
            times_ms = [int(now * 1000)] if times is None else [int(t * 1000) for t in times]
            run.add(columns, rows, times_ms, batch_rows, request_ids)
            buffer.rows += rows
            buffer.newest = now
            if was_empty:
                buffer.oldest = now
            if was_empty or buffer.rows >= self.max_rows:
                self._wake.notify()

    def flush(self) -> None:
        """Write whatever is buffered now, in the caller's thread."""
        with self._wake:
            buffer, self._buffer = self._buffer, _Buffer()
        self._write(buffer)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        self.flush()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        # Nice the writer thread (Linux schedules threads on their own): Parquet encoding then
        # runs while requests wait on the network, not in front of them on the same core.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        while True:
            with self._wake:
                while not self._closed and not self._due(time.time()):
                    timeout = (
                        self._buffer.oldest + self.max_seconds - time.time()
                        if self._buffer.rows
                        else None
                    )
                    self._wake.wait(timeout)
                if self._closed:
                    return
                buffer, self._buffer = self._buffer, _Buffer()
            try:
                self._write(buffer)
            except Exception:
                log.exception("dropping %d logged rows: writing a segment failed", buffer.rows)

    def _due(self, now: float) -> bool:
        rows = self._buffer.rows
        return rows >= self.max_rows or (rows > 0 and now - self._buffer.oldest >= self.max_seconds)

    def _write(self, buffer: _Buffer) -> None:
        if buffer.rows == 0:
            return
        table = _buffer_table(buffer.runs)
        for name, value in self.constants.items():
            table = table.append_column(name, pa.repeat(value, table.num_rows))
        if self.metadata:
            table = table.replace_schema_metadata(self.metadata)
        # Dictionary pages only pay off for repeated strings (not ids); LZ4 decodes fastest of
        # the codecs tried; statistics only for the time column (a reader may skip row groups by
        # time), as the others' cost a third of the encoding for nothing a drift check reads.
        strings = [
            f.name
            for f in table.schema
            if pa.types.is_string(f.type) and f.name not in _UNIQUE_STRINGS
        ]
        options: dict[str, Any] = {
            "use_dictionary": strings,
            "compression": "lz4",
            "write_statistics": [TS_COLUMN],
        }
        with self._write_lock:
            self._seq += 1
            name = segment_name(buffer.newest, self.writer_id, self._seq)
            if isinstance(self._fs, LocalFileSystem):
                _write_local(table, f"{self._dir}/{name}", options)
            else:
                sink = io.BytesIO()
                pq.write_table(table, sink, **options)
                store_bytes(join(self.uri, name), sink.getvalue())
            if self.retention_segments is not None or self.retention_bytes is not None:
                self._enforce_retention()

    def _enforce_retention(self) -> None:
        segments = _segment_sizes(self._fs, self._dir)
        first = max(0, len(segments) - (self.retention_segments or len(segments)))
        if self.retention_bytes is not None:
            kept = sum(size for _, size in segments[first:])
            while kept > self.retention_bytes and first < len(segments) - 1:
                kept -= segments[first][1]
                first += 1
        for path, _ in segments[:first]:
            with contextlib.suppress(FileNotFoundError):  # another writer deleted it first
                self._fs.rm(path)


def _write_local(table: pa.Table, path: str, options: Mapping[str, Any]) -> None:
    """A segment written by Arrow straight into a temporary file, then renamed (a reader never
    sees half a file): no Python buffer to grow and copy, ~6 MB per 100,000 rows, and Arrow
    writes without the GIL."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp")
    try:
        pq.write_table(table, str(tmp), **options)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Logged(NamedTuple):
    """One request as `SegmentWriter.append_many` takes it: `append`'s arguments and the time
    it was logged (epoch seconds)."""

    batch: Batch
    predictions: Values
    request_id: str | None
    probabilities: npt.NDArray[np.float64] | None
    time: float


def _joined(
    logged: list[Logged],
) -> tuple[_Columns, int, Batch, list[int], list[str] | None, list[float]]:
    """Alike requests as one batch: each column joined (one ``np.concatenate``), each request's
    rows, ids and time; ValueError naming a request whose columns are not one per row."""
    first = logged[0]
    batch_rows = [len(request.predictions) for request in logged]
    for index, request in enumerate(logged):
        for key, values in request.batch.items():
            if len(values) != batch_rows[index]:
                raise ValueError(
                    f"request {index}: column {key!r} has {len(values)} values for "
                    f"{batch_rows[index]} rows"
                )
    if len(logged) == 1:
        columns: dict[str | tuple[str, ...], Values] = dict(cast(_Columns, first.batch))
        columns[PREDICTION_COLUMN] = first.predictions
        if first.probabilities is not None:
            columns[LOG_PROBABILITIES_COLUMN] = first.probabilities
    else:
        batches = [cast(_Columns, r.batch) for r in logged]
        columns = {key: _concatenate([b[key] for b in batches]) for key in batches[0]}
        columns[PREDICTION_COLUMN] = _concatenate([r.predictions for r in logged])
        if first.probabilities is not None:
            columns[LOG_PROBABILITIES_COLUMN] = np.concatenate([r.probabilities for r in logged])
    ids = None if first.request_id is None else [cast(str, r.request_id) for r in logged]
    return (
        columns,
        sum(batch_rows),
        first.batch,
        batch_rows,
        ids,
        [r.time for r in logged],
    )


def _concatenate(parts: list[Values]) -> Values:
    if all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts)
    return [value for part in parts for value in part]


_UNIQUE_STRINGS = frozenset({LOG_REQUEST_ID_COLUMN})
"""String columns with a value per row: a dictionary would only grow until Parquet gives up."""


def _check_batch(batch: Batch) -> None:
    """ValueError for a name starting with ``_mlkube_``, or values whose shape is not a name's
    (1-D) or a names tuple's (2-D, a column per name)."""
    for key, values in batch.items():
        shape = np.shape(values)
        if isinstance(key, tuple) and shape[1:] != (len(key),):
            raise ValueError(
                f"columns {key!r} need an array of shape (rows, {len(key)}), not {shape}"
            )
        if not isinstance(key, tuple) and len(shape) != 1:
            raise ValueError(
                f"column {key!r} needs one value per row, not an array of shape {shape}"
            )
    names = [n for key in batch for n in (key if isinstance(key, tuple) else (key,))]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"column {twice[0]!r} is given twice")
    reserved = [name for name in names if name.startswith(RESERVED_COLUMN_PREFIX)]
    if reserved:
        raise ValueError(
            f"column {reserved[0]!r}: names starting with {RESERVED_COLUMN_PREFIX!r} "
            "are the inference log's own"
        )


def _buffer_table(runs: list[_Run]) -> pa.Table:
    """All buffered batches as one table, in the order they came; Arrow promotes the types of
    runs that differ (an int column that later takes floats)."""
    tables = [run.table() for run in runs]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def _segment_paths(fs: Any, directory: str) -> list[str]:
    """Segment paths, oldest first; temporary files of writes in flight are not segments."""
    fs.invalidate_cache(directory)  # s3fs caches listings; segments come and go underneath
    try:
        names: list[str] = fs.ls(directory, detail=False)
    except FileNotFoundError:
        return []
    return sorted(
        (p for p in names if p.endswith(SEGMENT_SUFFIX)), key=lambda p: p.rsplit("/", 1)[-1]
    )


def _segment_sizes(fs: Any, directory: str) -> list[tuple[str, int]]:
    """(path, bytes) of each segment, oldest first, from one listing. Locally by ``os.scandir``:
    fsspec's listing builds a dict per file, ~6 ms of GIL for 300 segments against ~2, after every
    segment written (a stall the requests in flight feel)."""
    if isinstance(fs, LocalFileSystem):
        return sorted(_local_segment_sizes(directory), key=lambda entry: _name(entry[0]))
    fs.invalidate_cache(directory)
    try:
        entries: list[dict[str, Any]] = fs.ls(directory, detail=True)
    except FileNotFoundError:
        return []
    return sorted(
        (
            (e["name"], int(e.get("size") or 0))
            for e in entries
            if e["name"].endswith(SEGMENT_SUFFIX)
        ),
        key=lambda entry: _name(entry[0]),
    )


def _local_segment_sizes(directory: str) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(SEGMENT_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):  # another writer deleted it
                        found.append((entry.path, entry.stat().st_size))
    except FileNotFoundError:
        return []
    return found


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def read_window(
    uri: str,
    rows: int | None = None,
    seconds: int | None = None,
    columns: list[str] | None = None,
    now: float | None = None,
) -> pa.Table:
    """The last `rows` logged rows and/or those logged in the last `seconds`, oldest first.

    Segments are chosen from their names (by time) and, for a row window, their Parquet footers,
    so only the newest segments are opened. With several writers a row window is exact up to the
    time span of one segment.
    """
    fs, directory = fsspec.core.url_to_fs(join(uri))
    cutoff = None if seconds is None else (time.time() if now is None else now) - seconds
    paths = window_paths(fs, directory, rows, cutoff)
    if not paths:
        return _empty(columns)
    wanted = None if columns is None else list(dict.fromkeys([*columns, TS_COLUMN]))
    table = _read_segments(_arrow_filesystem(fs), paths, wanted)
    if table is None:
        return _empty(columns)
    keep = window_mask(table.column(TS_COLUMN).to_numpy(), rows, cutoff)
    if keep is not None:
        table = table.filter(keep)
    ts = table.column(TS_COLUMN).to_numpy()
    if ts.size > 1 and bool(np.any(ts[1:] < ts[:-1])):
        table = table.sort_by(TS_COLUMN)  # stable: rows logged at the same time keep their order
    return table if columns is None else table.select(columns)


def window_paths(fs: Any, directory: str, rows: int | None, cutoff: float | None) -> list[str]:
    """The segments, oldest first, that may hold rows of the window: by name, those whose newest
    row is at or after `cutoff` (epoch seconds), then, by footer, the fewest newest ones holding
    at least `rows` rows."""
    paths = _segment_paths(fs, directory)
    if cutoff is not None:
        paths = [p for p in paths if segment_time(_name(p)) >= cutoff]
    if rows is not None:
        paths = _newest_covering(fs, paths, rows)
    return paths


def window_mask(
    ts: npt.NDArray[np.int64], rows: int | None, cutoff: float | None
) -> npt.NDArray[np.bool_] | None:
    """Which rows of the window's segments, concatenated oldest segment first, are in it (None:
    all): those logged at or after `cutoff` (epoch seconds), then of those the last `rows` in
    logged time, ties going to the later row, as a stable sort by time would order them."""
    keep = None if cutoff is None else ts >= int(cutoff * 1000)
    kept = ts.size if keep is None else int(np.count_nonzero(keep))
    if rows is None or kept <= rows:
        return None if keep is None or kept == ts.size else keep
    candidates = ts if keep is None else ts[keep]
    boundary = np.partition(candidates, kept - rows)[kept - rows]  # the oldest time kept
    newer: npt.NDArray[np.bool_] = ts > boundary
    ties = np.flatnonzero(ts == boundary if keep is None else (ts == boundary) & keep)
    newer[ties[ties.size - (rows - int(np.count_nonzero(newer))) :]] = True
    return newer


def _arrow_filesystem(fs: Any) -> Any:
    """pyarrow's own local filesystem reads segments in parallel without Python in the loop."""
    return pafs.LocalFileSystem() if isinstance(fs, LocalFileSystem) else fs


def _read_segments(fs: Any, paths: list[str], columns: list[str] | None) -> pa.Table | None:
    """The segments in order as one table; strings stay dictionary-encoded as stored, which
    reads several times faster than materialising every string."""
    try:
        schema = pq.read_schema(paths[-1], filesystem=fs)
    except FileNotFoundError:
        schema = None
    strings = [
        f.name
        for f in schema or []
        if (columns is None or f.name in columns)
        and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    ]
    try:
        table: pa.Table = pq.read_table(
            paths, filesystem=fs, columns=columns, read_dictionary=strings
        )
        return table
    except (FileNotFoundError, pa.ArrowInvalid, pa.ArrowTypeError):
        pass  # retention deleted a segment since the listing, or segments' types differ
    tables = [t for t in (_read_segment(fs, p, columns, strings) for p in paths) if t is not None]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def _read_segment(
    fs: Any, path: str, columns: list[str] | None, strings: list[str]
) -> pa.Table | None:
    try:
        return pq.read_table(path, filesystem=fs, columns=columns, read_dictionary=strings)
    except FileNotFoundError:
        return None


def _newest_covering(fs: Any, paths: list[str], rows: int) -> list[str]:
    """The fewest newest segments that hold at least `rows` rows, oldest first."""
    chosen: list[str] = []
    total = 0
    for path in reversed(paths):
        if total >= rows:
            break
        rows_in_segment = _footer_rows(fs, path)
        if rows_in_segment is not None:
            total += rows_in_segment
            chosen.append(path)
    return chosen[::-1]


def _empty(columns: list[str] | None) -> pa.Table:
    names = [TS_COLUMN] if columns is None else columns
    return pa.table({name: pa.array([], type=pa.int64()) for name in names})


def count_rows(uri: str) -> int:
    """Rows in the whole log, from Parquet footers only: the segments in `uri` and in its model
    versions' directories (``<uri>/<modelversion>/``), not the feedback in ``_feedback``."""
    fs, directory = fsspec.core.url_to_fs(join(uri))
    total = 0
    for paths in log_segment_paths(fs, directory).values():
        total += sum(_footer_rows(fs, path) or 0 for path in paths)
    return total


def log_segment_paths(fs: Any, directory: str) -> dict[str, list[str]]:
    """Segment paths, oldest first, by where they are: ``""`` for the directory itself, else the
    name of a model version's directory under it (those starting with ``_``, the feedback, are
    not the log)."""
    fs.invalidate_cache(directory)
    try:
        found: list[str] = fs.find(directory, maxdepth=2)
    except FileNotFoundError:
        return {}
    root = directory.rstrip("/") + "/"
    by_place: dict[str, list[str]] = {}
    for path in found:
        place, _, name = path.removeprefix(root).rpartition("/")
        if name.endswith(SEGMENT_SUFFIX) and not place.startswith("_"):
            by_place.setdefault(place, []).append(path)
    return {place: sorted(paths, key=_name) for place, paths in by_place.items()}


def _footer_rows(fs: Any, path: str) -> int | None:
    try:
        with fs.open(path, "rb") as f:
            rows: int = pq.read_metadata(f).num_rows
    except FileNotFoundError:
        return None
    return rows
