"""The server hands answered requests to the inference log in batches (one copy per column for
all of them): order, per-request ids and times survive, requests of different shapes may mix, and
a bad request is refused by name with none of its batch queued."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlkube.layout import LOG_PROBABILITIES_COLUMN, LOG_REQUEST_ID_COLUMN
from mlkube.runtime.inference_log import PREDICTION_COLUMN, TS_COLUMN, Logged, SegmentWriter
from mlkube.runtime.protocol.request_ids import uuid4_hex

pytestmark = pytest.mark.runtime

T0 = 1_800_000_000.0


def _table(directory: Path) -> dict[str, list[object]]:
    tables = [pq.read_table(p) for p in sorted(directory.glob("*.parquet"))]
    assert len(tables) == 1
    return tables[0].to_pydict()


def test_a_batch_of_requests_is_logged_as_each_one_would_be(tmp_path: Path) -> None:
    matrix = {("a", "b"): np.array([[1.0, 2.0], [3.0, 4.0]])}
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])
    batch = [
        Logged(matrix, np.array([0, 1]), "first", probabilities, T0),
        Logged({("a", "b"): np.array([[5.0, 6.0]])}, np.array([1]), "second", probabilities[1:], T0 + 1),
        # a request read column by column has other keys: a run of its own, in order
        Logged({"a": np.array([7.0]), "b": np.array([8.0])}, np.array([0]), "third", probabilities[:1], T0 + 2),
    ]  # fmt: skip
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        writer.append_many(batch)
    table = _table(tmp_path)
    assert table["a"] == [1.0, 3.0, 5.0, 7.0] and table["b"] == [2.0, 4.0, 6.0, 8.0]
    assert table[PREDICTION_COLUMN] == [0, 1, 1, 0]
    assert table[LOG_REQUEST_ID_COLUMN] == ["first-0", "first-1", "second-0", "third-0"]
    assert table[LOG_PROBABILITIES_COLUMN][2] == [0.2, 0.8]
    assert table[TS_COLUMN] == [int(T0 * 1000)] * 2 + [int(T0 * 1000) + 1000, int(T0 * 1000) + 2000]


def test_a_bad_request_in_a_batch_is_named_and_nothing_is_queued(tmp_path: Path) -> None:
    good = Logged({"x": np.arange(2.0)}, np.zeros(2), "ok", None, T0)
    short = Logged({"x": np.arange(1.0)}, np.zeros(3), "short", None, T0)
    with SegmentWriter(str(tmp_path), "w1", max_seconds=3600) as writer:
        with pytest.raises(ValueError, match="request 1: column 'x' has 1 values for 3 rows"):
            writer.append_many([good, short])
        writer.append_many([good])
    assert _table(tmp_path)[LOG_REQUEST_ID_COLUMN] == ["ok-0", "ok-1"]


def test_generated_request_ids_are_uuid4_and_never_repeat_across_a_fork() -> None:
    """Random bits are read 4 KiB at a time; a forked child must not reuse its parent's."""
    parent = uuid4_hex()
    assert len(parent) == 32 and parent[12] == "4" and parent[16] in "89ab"
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, uuid4_hex().encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    ids = {uuid4_hex() for _ in range(1000)} | {parent}
    assert len(ids) == 1001 and from_child not in ids
