"""A drift check over 10M logged rows x 20 float columns, streamed: time, peak RSS, verdicts.

The log is generated once (cached under ~/.cache/mlkube/bench, or --dir): 10,000,000 rows of 20
float columns, appended in 1,000-row requests to mlkube's own SegmentWriter (a request's float
matrix under its column names, as the server logs it) and flushed every 100,000 rows, so 100 LZ4
Parquet segments in ``log/v1/``, the directory of model version v1. Three columns are shifted
(0.5, 0.3 and 0.15 reference standard deviations); the reference sample holds 10,000 rows.

Each measurement runs in its own process, so its peak RSS (os.wait4's ru_maxrss, imports
included) is its own; times are wall seconds from the first listing to the answer, reading
included, best of --repeat runs, with the process's CPU seconds over the same span (less disturbed
than wall time by whatever else the machine runs):

- ``mlkube``: ``run_drift`` (what ``mlkube-runtime drift --model-version v1`` runs) over a 10M-row
  window: KS and normalised Wasserstein per column, the default rule, on one thread per core.
- ``floor``: the least work that gives the same exact KS statistics in bounded memory, written
  by hand in one process with the same threads: read each segment's 20 columns with pyarrow and,
  per column, sort the batch and count it at the reference's sorted values (two searchsorted);
  the KS statistic from the summed counts. It computes no p-value, no Wasserstein and no verdict,
  so mlkube's ratio to it is what the whole check costs over that minimum.
- ``read``: reading the same columns alone (pyarrow, same threads): the I/O share of both.

Then, at a 1M-row window, the streamed check against the exact in-memory one (``read_window`` +
``detect_drift``, equal to scipy): verdicts, drifted columns, and the largest differences of the
statistics. Figures are printed, never asserted::

    .venv/bin/python benchmarks/drift_window_benchmark.py [--dir DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 10_000_000
CHECK_ROWS = 1_000_000
SEGMENT_ROWS = 100_000
REQUEST_ROWS = 1_000
REFERENCE_ROWS = 10_000
COLUMNS = [f"f{i:02d}" for i in range(20)]
SHIFTED = {"f00": 0.5, "f01": 0.3, "f02": 0.15}
"""Column -> shift of the logged values in reference standard deviations."""
VERSION = "v1"
LAYOUT = "1"
"""Bumped when the generated data changes, so a stale cache is rebuilt."""

Sampler = Callable[[np.random.Generator, int], npt.NDArray[np.float64]]
SAMPLERS: list[Sampler] = [
    lambda g, n: g.normal(0, 1, n),
    lambda g, n: g.lognormal(0, 0.5, n),
    lambda g, n: g.uniform(0, 10, n),
    lambda g, n: g.exponential(1.0, n),
    lambda g, n: g.gamma(2.0, 2.0, n),
    lambda g, n: g.standard_t(5, n),
    lambda g, n: np.round(g.normal(50, 10, n)),  # ties: integer-valued
    lambda g, n: g.beta(2.0, 5.0, n),
    lambda g, n: g.laplace(0, 1, n),
    lambda g, n: g.logistic(0, 1, n),
]


def _column(name: str, rng: np.random.Generator, rows: int, shifted: bool) -> npt.NDArray[Any]:
    sampler = SAMPLERS[COLUMNS.index(name) % len(SAMPLERS)]
    values = sampler(rng, rows)
    if shifted and name in SHIFTED:
        spread = float(np.std(sampler(np.random.default_rng(0), 100_000)))
        values = values + SHIFTED[name] * spread
    return values


def prepare(directory: Path) -> Path:
    """The cached log and reference under `directory` (written once)."""
    data = directory / f"drift-window-{ROWS}x{len(COLUMNS)}-v{LAYOUT}"
    if (data / "done").exists():
        return data
    from mlkube.runtime.inference_log import SegmentWriter

    started = time.perf_counter()
    rng = np.random.default_rng(1)
    reference = {name: _column(name, rng, REFERENCE_ROWS, False) for name in COLUMNS}
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(reference), data / "reference.parquet")
    names = tuple(COLUMNS)
    log = data / "log" / VERSION
    with SegmentWriter(str(log), "bench-0", max_rows=SEGMENT_ROWS, max_seconds=3600) as writer:
        for _ in range(0, ROWS, SEGMENT_ROWS):
            block = np.column_stack([_column(n, rng, SEGMENT_ROWS, True) for n in COLUMNS])
            for start in range(0, SEGMENT_ROWS, REQUEST_ROWS):
                rows = block[start : start + REQUEST_ROWS]
                writer.append({names: rows}, (rows[:, 0] > 0).astype(np.int64))
            writer.flush()  # a segment per 100,000 rows, as max_rows would cut it
    (data / "done").write_text(f"{time.perf_counter() - started:.1f}")
    return data


# --- children: each prints one JSON line -------------------------------------------------------


def _spec(rows: int) -> Any:
    from mlkube.api.driftmonitor import DriftMonitorSpec, Window

    return DriftMonitorSpec(deployment="bench", window=Window(rows=rows))


def child_mlkube(data: Path) -> dict[str, Any]:
    from mlkube.runtime.drift import run_drift

    spec = _spec(ROWS)
    started, cpu = time.perf_counter(), time.process_time()
    report = run_drift(spec, str(data / "reference.parquet"), str(data / "log"), None, VERSION)
    return {
        "seconds": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        "rows": report.rows,
        "verdict": report.verdict,
        "drifted": report.drifted_columns,
        "modelVersion": report.model_version,
    }


def _segments(data: Path) -> list[Path]:
    return sorted((data / "log" / VERSION).glob("*.parquet"))


def child_floor(data: Path) -> dict[str, Any]:
    reference = pq.read_table(data / "reference.parquet")
    points = {n: np.unique(reference.column(n).to_numpy()) for n in COLUMNS}
    workers = os.cpu_count() or 1
    started, cpu = time.perf_counter(), time.process_time()

    def share(paths: list[Path]) -> tuple[int, dict[str, npt.NDArray[np.int64]]]:
        rows = 0
        counts = {n: np.zeros((2, points[n].size), dtype=np.int64) for n in COLUMNS}
        for path in paths:
            table = pq.read_table(path, columns=COLUMNS, use_threads=False)
            rows += table.num_rows
            for name in COLUMNS:
                ordered = np.sort(table.column(name).to_numpy())
                counts[name][0] += np.searchsorted(ordered, points[name], side="left")
                counts[name][1] += np.searchsorted(ordered, points[name], side="right")
        return rows, counts

    paths = _segments(data)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(share, [paths[i::workers] for i in range(workers)]))
    rows = sum(p[0] for p in parts)
    statistics = {}
    for name in COLUMNS:
        below, at_most = (sum(p[1][name][i] for p in parts) for i in (0, 1))
        ref_sorted = np.sort(reference.column(name).to_numpy())
        ref_cdf = np.searchsorted(ref_sorted, points[name], side="right") / ref_sorted.size
        statistics[name] = max(
            float(below[0]) / rows,
            float(np.abs(ref_cdf - at_most / rows).max()),
            float(np.abs(ref_cdf[:-1] - below[1:] / rows).max()),
        )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "rows": rows, "ks": statistics}


def child_read(data: Path) -> dict[str, Any]:
    workers = os.cpu_count() or 1
    started, cpu = time.perf_counter(), time.process_time()

    def share(paths: list[Path]) -> int:
        return sum(pq.read_table(p, columns=COLUMNS, use_threads=False).num_rows for p in paths)

    paths = _segments(data)
    with ThreadPoolExecutor(workers) as pool:
        rows = sum(pool.map(share, [paths[i::workers] for i in range(workers)]))
    return {
        "seconds": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        "rows": rows,
    }


def child_check(data: Path) -> dict[str, Any]:
    """The streamed check against the exact one at CHECK_ROWS."""
    from mlkube.runtime.drift import detect_drift, detect_window_drift, read_reference
    from mlkube.runtime.inference_log import read_window
    from mlkube.runtime.log_window import open_window

    spec = _spec(CHECK_ROWS)
    reference = read_reference(str(data / "reference.parquet"))
    log = str(data / "log" / VERSION)
    started = time.perf_counter()
    exact = detect_drift(reference, read_window(log, rows=CHECK_ROWS, columns=COLUMNS), spec)
    exact_seconds = time.perf_counter() - started
    started = time.perf_counter()
    streamed = detect_window_drift(reference, open_window(log, rows=CHECK_ROWS), spec)
    streamed_seconds = time.perf_counter() - started
    pairs = list(zip(exact.columns, streamed.columns, strict=True))
    return {
        "rows": [exact.rows, streamed.rows],
        "verdicts": [exact.verdict, streamed.verdict],
        "drifted": [exact.drifted_columns, streamed.drifted_columns],
        "maxKs": max(abs(a.statistic - b.statistic) for a, b in pairs),
        "maxP": max(abs((a.p_value or 0) - (b.p_value or 0)) for a, b in pairs),
        "maxDistance": max(abs((a.distance or 0) - (b.distance or 0)) for a, b in pairs),
        "closestToThreshold": min(abs((a.distance or 0) - 0.1) for a, _ in pairs),
        "seconds": [exact_seconds, streamed_seconds],
    }


CHILDREN: dict[str, Callable[[Path], dict[str, Any]]] = {
    "mlkube": child_mlkube,
    "floor": child_floor,
    "read": child_read,
    "check": child_check,
}


def run_child(kind: str, data: Path) -> tuple[dict[str, Any], float]:
    """The child's JSON result and its peak RSS in MB (imports included)."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", kind, "--data", str(data)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} failed ({status})")
    return json.loads(output.splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path.home() / ".cache/mlkube/bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.data)))
        return

    started = time.perf_counter()
    data = prepare(args.dir)
    size = sum(p.stat().st_size for p in _segments(data)) / 2**20
    print(
        f"data: {ROWS:,} rows x {len(COLUMNS)} float columns in {len(_segments(data))} segments "
        f"({size:,.0f} MB, {data}), reference {REFERENCE_ROWS:,} rows; shifted: "
        f"{', '.join(SHIFTED)} (ready in {time.perf_counter() - started:.1f} s)"
    )
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
    for path in _segments(data):  # into the page cache: every run reads warm files
        path.read_bytes()
    best: dict[str, tuple[float, float, float]] = {}
    runs: dict[str, list[str]] = {}
    results: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeat):
        for kind in ("read", "floor", "mlkube"):
            result, peak = run_child(kind, data)
            results[kind] = result
            runs.setdefault(kind, []).append(f"{result['seconds']:.2f}")
            if kind not in best or result["seconds"] < best[kind][0]:
                best[kind] = (result["seconds"], peak, result["cpu"])
    floor, _, floor_cpu = best["floor"]
    print(f"{'':8}{'best s':>8}{'x floor':>9}{'cpu s':>7}{'x floor':>9}{'peak MB':>9}  runs (s)")
    for kind in ("mlkube", "floor", "read"):
        seconds, peak, cpu = best[kind]
        ratios = f"{seconds / floor:9.2f}{cpu:7.1f}{cpu / floor_cpu:9.2f}"
        print(f"{kind:8}{seconds:8.2f}{ratios}{peak:9.0f}  {', '.join(runs[kind])}")
    mlkube = results["mlkube"]
    print(
        f"mlkube: {mlkube['rows']:,} rows of model version {mlkube['modelVersion']}, verdict "
        f"{mlkube['verdict']}, drifted {', '.join(mlkube['drifted']) or 'none'}"
    )
    check, _ = run_child("check", data)
    print(
        f"at {CHECK_ROWS:,} rows: exact {check['verdicts'][0]} {check['drifted'][0]} in "
        f"{check['seconds'][0]:.2f} s, streamed {check['verdicts'][1]} {check['drifted'][1]} in "
        f"{check['seconds'][1]:.2f} s; verdicts "
        f"{'agree' if check['verdicts'][0] == check['verdicts'][1] else 'DIFFER'}, drifted "
        f"columns {'agree' if check['drifted'][0] == check['drifted'][1] else 'DIFFER'}; max "
        f"|KS diff| {check['maxKs']:.1e}, |p diff| {check['maxP']:.1e}, |normalised "
        f"Wasserstein diff| {check['maxDistance']:.1e} (the closest distance to the 0.1 "
        f"threshold is {check['closestToThreshold']:.3f} away)"
    )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
