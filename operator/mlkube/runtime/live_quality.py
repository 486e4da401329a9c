"""A model server's own live quality: labels from ``/feedback`` joined with the rows it answered.

Any pod of a Deployment may receive a label and stores it in the Deployment's ``_feedback/``
segments. Each pod reads every new segment there, every few seconds in a niced daemon thread, and
counts the labels that name rows it answered itself, so each label counts once, on the pod and
model version that answered the row, and canary analysis compares canary and stable from the
counter deltas of the same scrapes (``mlkube.core.analysis``).

The request path only appends (request id, predictions) to a bounded deque (~0.1 µs); the thread
keeps the newest rows per request (id, first row, row count) rather than an id per row, and
joins a label ``<id>-<row>`` by its id and row number, in Arrow and numpy (no loop per row).

A row counts once: the first label the pod reads for it. A later label for the same row (a
correction) is not counted again, as a counter cannot take the first one back; nor is a label
for a row older than the pod's newest `max_rows` rows, or one stored before its prediction was
answered.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlkube.layout import (
    FEEDBACK_LABEL_COLUMN,
    FEEDBACK_REQUEST_ID_COLUMN,
    LOG_TS_COLUMN,
    join,
)
from mlkube.runtime.inference_log import SEGMENT_SUFFIX, WRITER_NICENESS, segment_time
from mlkube.runtime.quality import encode_classes, merge_feedback

POLL_SECONDS = 5.0
MAX_ROWS = 500_000
"""Answered rows kept to join labels against: ~10 bytes a row plus ~60 a request."""
MAX_PENDING_REQUESTS = 100_000
"""Requests answered since the last poll; beyond, the oldest are forgotten (a stalled thread
never grows memory)."""
LISTING_SLACK_SECONDS = 120.0
"""A feedback segment is looked for until this long after the time in its name (its newest
label): segments of several pods appear in the listing a little out of name order."""
_ROW_ID = r"^(?P<request>.+)-(?P<row>[0-9]{1,18})$"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Counted:
    """Labels counted in one poll: for classifiers the correct predictions, for regressors the
    sums of absolute and squared errors."""

    labelled: int = 0
    correct: int = 0
    absolute_error: float = 0.0
    squared_error: float = 0.0


@dataclass
class _Chunk:
    """Consecutive answered requests: each one's id, first row and row count, then every row's
    prediction and whether a label was counted for it."""

    ids: pa.Array
    starts: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int64]
    predictions: npt.NDArray[Any]
    counted: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, answered: list[tuple[str, npt.NDArray[Any]]]) -> _Chunk:
        rows = np.fromiter((len(p) for _, p in answered), np.int64, len(answered))
        return cls(
            ids=pa.array([request_id for request_id, _ in answered], pa.string()),
            starts=np.cumsum(rows) - rows,
            rows=rows,
            predictions=np.concatenate([p for _, p in answered]),
            counted=np.zeros(int(rows.sum()), dtype=bool),
        )

    def __add__(self, later: _Chunk) -> _Chunk:
        return _Chunk(
            ids=pa.concat_arrays([self.ids, later.ids]),
            starts=np.concatenate([self.starts, later.starts + len(self.predictions)]),
            rows=np.concatenate([self.rows, later.rows]),
            predictions=np.concatenate([self.predictions, later.predictions]),
            counted=np.concatenate([self.counted, later.counted]),
        )


class LiveQuality:
    """Counts this pod's labelled predictions; `observe` on the request path, `poll` (or the
    thread `start` runs) anywhere else. `classes`: a classifier's ``classes_``, None for a
    regressor."""

    def __init__(
        self,
        feedback_uri: str,
        classes: npt.NDArray[Any] | None,
        on_counted: Callable[[Counted], None],
        max_rows: int = MAX_ROWS,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.feedback_uri = feedback_uri
        self.classes = None if classes is None else classes.tolist()
        self.max_rows = max_rows
        self.poll_seconds = poll_seconds
        self._on_counted = on_counted
        self._answered: collections.deque[tuple[str, npt.NDArray[Any]]] = collections.deque(
            maxlen=MAX_PENDING_REQUESTS
        )
        self._chunks: list[_Chunk] = []
        self._fs, self._dir = fsspec.core.url_to_fs(join(feedback_uri))
        self._horizon = time.time()
        """Segments named before this are not looked for (none can label a row answered since
        the pod started)."""
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-quality", daemon=True)

    def observe(self, request_id: str, predictions: npt.NDArray[Any]) -> None:
        """An answered request (a deque append: thread-safe, no lock)."""
        self._answered.append((request_id, predictions))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_seconds + 5)

    def _run(self) -> None:
        # niced like the log writer: joins run while requests wait on the network
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        while not self._stop.wait(self.poll_seconds):
            try:
                counted = self.poll()
                if counted.labelled:
                    self._on_counted(counted)
            except Exception:
                log.exception("counting live quality from %s failed", self.feedback_uri)

    def poll(self) -> Counted:
        """Take the requests answered since the last poll, then count the labels of the feedback
        segments not read before that name rows of this pod."""
        self._take_answered()
        tables = [t for t in map(self._read, self._new_segments()) if t is not None]
        if not tables or not self._chunks:
            return Counted()
        return self._count(merge_feedback(tables).table)

    def _take_answered(self) -> None:
        answered = []
        with contextlib.suppress(IndexError):  # popleft, not a copy: requests keep appending
            while True:
                answered.append(self._answered.popleft())
        if not answered:
            return
        chunk = _Chunk.of(answered)
        # a small last chunk takes the new one, so chunks stay few at any traffic
        if self._chunks and len(self._chunks[-1].predictions) < self.max_rows // 16:
            chunk = self._chunks.pop() + chunk
        self._chunks.append(chunk)
        rows = sum(len(c.predictions) for c in self._chunks)
        while len(self._chunks) > 1 and rows - len(self._chunks[0].predictions) >= self.max_rows:
            rows -= len(self._chunks.pop(0).predictions)

    def _new_segments(self) -> list[str]:
        listed_at = time.time()
        self._fs.invalidate_cache(self._dir)
        try:
            paths: list[str] = self._fs.ls(self._dir, detail=False)
        except FileNotFoundError:
            return []
        new = []
        for path in paths:
            name = path.rsplit("/", 1)[-1]
            if not name.endswith(SEGMENT_SUFFIX) or name in self._seen:
                continue
            try:
                written = segment_time(name)
            except ValueError:
                continue  # not a segment name
            if written >= self._horizon:
                new.append(path)
                self._seen.add(name)
        self._horizon = max(self._horizon, listed_at - LISTING_SLACK_SECONDS)
        self._seen = {name for name in self._seen if segment_time(name) >= self._horizon}
        return sorted(new, key=lambda p: p.rsplit("/", 1)[-1])

    def _read(self, path: str) -> pa.Table | None:
        try:
            with self._fs.open(path, "rb") as f:
                table: pa.Table = pq.read_table(
                    f, columns=[FEEDBACK_REQUEST_ID_COLUMN, FEEDBACK_LABEL_COLUMN, LOG_TS_COLUMN]
                )
        except FileNotFoundError:
            return None
        return table

    def _count(self, labels: pa.Table) -> Counted:
        """Labels (one per row id) against the kept rows, newest chunk first; each label and
        each row counts at most once."""
        parts = pc.extract_regex(
            labels.column(FEEDBACK_REQUEST_ID_COLUMN).combine_chunks(), _ROW_ID
        )
        parsed = parts.is_valid()
        requests = pc.struct_field(parts, "request").filter(parsed)
        row_numbers = pc.cast(pc.struct_field(parts, "row").filter(parsed), pa.int64())
        label_values = labels.column(FEEDBACK_LABEL_COLUMN).combine_chunks().filter(parsed)
        open_labels = np.ones(len(requests), dtype=bool)
        truth: list[pa.Array] = []
        predicted: list[npt.NDArray[Any]] = []
        row_of = row_numbers.to_numpy(zero_copy_only=False)
        for chunk in reversed(self._chunks):
            found = pc.index_in(requests, value_set=chunk.ids)
            request = found.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            match = open_labels & found.is_valid().to_numpy(zero_copy_only=False)
            match &= row_of < chunk.rows[request]
            flat = chunk.starts[request] + row_of
            match[match] &= ~chunk.counted[flat[match]]
            if not match.any():
                continue
            rows = flat[match]
            chunk.counted[rows] = True
            open_labels &= ~match
            truth.append(label_values.filter(pa.array(match)))
            predicted.append(chunk.predictions[rows])
        if not truth:
            return Counted()
        return self._figures(pa.concat_arrays(truth), np.concatenate(predicted))

    def _figures(self, truth: pa.Array, predicted: npt.NDArray[Any]) -> Counted:
        if self.classes is not None:
            encoded = encode_classes(truth, predicted, self.classes)
            correct = int(np.count_nonzero(encoded.truth == encoded.predicted))
            return Counted(labelled=len(predicted), correct=correct)
        errors = truth.to_numpy(zero_copy_only=False).astype(np.float64) - predicted.astype(
            np.float64
        )
        return Counted(
            labelled=len(predicted),
            absolute_error=float(np.abs(errors).sum()),
            squared_error=float(np.square(errors).sum()),
        )
