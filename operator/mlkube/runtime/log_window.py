"""One model version's window of the inference log, read as a table or streamed batch by batch.

A Deployment's log holds one directory per serving model version (``mlkube.layout``), so a check
that watches one version reads that directory only: a canary that added an input column never
mixes its rows, or its schema, into the stable version's window. A flat directory (a laptop, a log
written before the per-version layout) is read as given.

Streaming keeps memory bounded by a record batch per worker thread, not by the window: a drift
check over 10M rows x 20 columns never holds more than a segment's batch of them at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from mlkube.layout import version_log_uri
from mlkube.runtime.artifacts import join
from mlkube.runtime.inference_log import (
    TS_COLUMN,
    _arrow_filesystem,
    log_segment_paths,
    read_window,
    segment_time,
    window_mask,
    window_paths,
)

BATCH_ROWS = 131_072
"""Rows per streamed record batch: a server's segment (100,000 rows by default) is one batch."""

log = logging.getLogger(__name__)

State = TypeVar("State")


class WindowError(ValueError):
    """The window's segments cannot be compared as one sample: a column is missing from some of
    them or has another type in some (the log changed schema within one model version)."""


@dataclass(frozen=True)
class VersionLog:
    uri: str
    """The directory whose segments form the window."""
    model_version: str | None
    """The model version whose directory it is; None for a flat directory read as given."""


def resolve_version_log(log_uri: str, model_version: str | None = None) -> VersionLog:
    """Where a check of `model_version` reads: ``<log_uri>/<model_version>/`` only. Without a
    version, `log_uri` itself when it holds segments; else the model version directory under it
    with the newest segment (None there too when it has none)."""
    if model_version is not None:
        return VersionLog(version_log_uri(log_uri, model_version), model_version)
    fs, directory = fsspec.core.url_to_fs(join(log_uri))
    by_place = log_segment_paths(fs, directory)
    versions = {place: paths for place, paths in by_place.items() if place}
    if by_place.get("") or not versions:
        return VersionLog(join(log_uri), None)
    newest = max(versions, key=lambda v: segment_time(versions[v][-1].rsplit("/", 1)[-1]))
    return VersionLog(version_log_uri(log_uri, newest), newest)


def read_version_window(
    log_uri: str,
    model_version: str | None,
    rows: int | None = None,
    seconds: int | None = None,
    columns: list[str] | None = None,
    now: float | None = None,
) -> pa.Table:
    """One model version's window as a table, oldest row first: ``read_window`` of the directory
    `resolve_version_log` picks (the last `rows` rows and/or those of the last `seconds`; `now` in
    epoch seconds, default the clock). A column missing from some segments reads as nulls there."""
    return read_window(resolve_version_log(log_uri, model_version).uri, rows, seconds, columns, now)


@dataclass(frozen=True)
class WindowSegment:
    path: str
    schema: pa.Schema
    keep: npt.NDArray[np.bool_] | None
    """Which of the segment's rows are in the window; None: all of them."""


@dataclass(frozen=True)
class LogWindow:
    """A window's segments, chosen and trimmed as ``read_window`` chooses and trims them."""

    filesystem: Any
    segments: tuple[WindowSegment, ...]
    rows: int

    def check_columns(self, names: Sequence[str]) -> None:
        """WindowError naming the first of `names` that some segments lack or type differently
        (ints and floats count as one type: the log promotes an int column that takes floats)."""
        total = len(self.segments)
        for name in names:
            lacking = [s for s in self.segments if name not in s.schema.names]
            if len(lacking) == total:
                raise WindowError(f"column {name!r} is missing from the inference log")
            if lacking:
                raise WindowError(
                    f"column {name!r} is missing from {len(lacking)} of {total} segments of the "
                    f"window (the first: {_name(lacking[0].path)}): the log changed schema within "
                    "the window; a window must hold one model version's rows"
                )
            kinds = {_type_kind(s.schema.field(name).type): s for s in self.segments}
            if len(kinds) > 1:
                (first, a), (second, b) = list(kinds.items())[:2]
                raise WindowError(
                    f"column {name!r} is {first} in segment {_name(a.path)} but {second} in "
                    f"{_name(b.path)}: the log changed schema within the window"
                )

    def logged_type(self, name: str) -> pa.DataType:
        """The type of a column in the newest segment (`check_columns` says whether all agree)."""
        return self.segments[-1].schema.field(name).type

    def scan(
        self,
        columns: Sequence[str],
        start: Callable[[], State],
        update: Callable[[State, pa.RecordBatch], None],
        workers: int | None = None,
    ) -> list[State]:
        """Feed the window's rows of `columns` to `update`, batch by batch (at most BATCH_ROWS
        rows), on `workers` threads (default: one per core), each with its own state from `start`;
        returns the states, to be merged by the caller. Batches come in no particular order. A
        segment deleted since the listing (retention) is skipped."""
        count = max(1, min(len(self.segments), workers or os.cpu_count() or 1))

        def run(share: Sequence[WindowSegment]) -> State:
            state = start()
            for segment in share:
                try:
                    for batch in self._batches(segment, columns):
                        update(state, batch)
                except FileNotFoundError:
                    log.warning("segment %s was deleted while the window was read", segment.path)
            return state

        shares = [self.segments[i::count] for i in range(count)]
        if count == 1:
            return [run(shares[0])]
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="log-window") as pool:
            return list(pool.map(run, shares))

    def _batches(self, segment: WindowSegment, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        strings = [
            n
            for n in columns
            if pa.types.is_string(segment.schema.field(n).type)
            or pa.types.is_large_string(segment.schema.field(n).type)
        ]
        # strings stay dictionary-encoded as stored: value counts need no materialised strings
        parquet = pq.ParquetFile(segment.path, filesystem=self.filesystem, read_dictionary=strings)
        offset = 0
        for read in parquet.iter_batches(BATCH_ROWS, columns=list(columns), use_threads=False):
            batch = read
            if segment.keep is not None:
                batch = read.filter(pa.array(segment.keep[offset : offset + read.num_rows]))
                offset += read.num_rows
            if batch.num_rows:
                yield batch


def open_window(
    uri: str, rows: int | None = None, seconds: int | None = None, now: float | None = None
) -> LogWindow:
    """The window of the log directory `uri` that ``read_window`` would read (the last `rows`
    rows and/or those logged in the last `seconds` before `now`, epoch seconds), from segment
    names, footers and, when the window ends inside segments, their time column only."""
    fs, directory = fsspec.core.url_to_fs(join(uri))
    cutoff = None if seconds is None else (time.time() if now is None else now) - seconds
    arrow_fs = _arrow_filesystem(fs)
    found: list[tuple[str, pq.FileMetaData]] = []
    for path in window_paths(fs, directory, rows, cutoff):
        try:
            found.append((path, pq.read_metadata(path, filesystem=arrow_fs)))
        except FileNotFoundError:
            continue
    total = sum(meta.num_rows for _, meta in found)
    keep: list[npt.NDArray[np.bool_] | None] = [None] * len(found)
    if found and (cutoff is not None or (rows is not None and total > rows)):
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            times = list(pool.map(lambda f: _times(arrow_fs, f[0], f[1].num_rows), found))
        mask = window_mask(np.concatenate(times), rows, cutoff)
        if mask is not None:
            ends = np.cumsum([t.size for t in times])
            keep = [None if part.all() else part for part in np.split(mask, ends[:-1])]
            total = int(np.count_nonzero(mask))
    segments = tuple(
        WindowSegment(path, meta.schema.to_arrow_schema(), kept)
        for (path, meta), kept in zip(found, keep, strict=True)
        if kept is None or kept.any()
    )
    return LogWindow(arrow_fs, segments, total)


def _times(fs: Any, path: str, rows: int) -> npt.NDArray[np.int64]:
    """A segment's logged times; a segment deleted since its footer was read keeps none of its
    rows (all times before any window)."""
    try:
        ts: npt.NDArray[np.int64] = (
            pq.read_table(path, filesystem=fs, columns=[TS_COLUMN], use_threads=False)
            .column(TS_COLUMN)
            .to_numpy()
        )
    except FileNotFoundError:
        return np.full(rows, np.iinfo(np.int64).min, dtype=np.int64)
    return ts


def _type_kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "numeric"
    if pa.types.is_large_string(arrow_type):
        return "string"
    return str(arrow_type)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]
