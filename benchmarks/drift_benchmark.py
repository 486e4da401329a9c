"""mlkube's drift check against Evidently's DataDriftPreset and Alibi Detect's TabularDrift.

One run: a 100,000-row reference and a 1,000,000-row current window (15 numeric + 5 categorical
columns; 3 numeric columns shifted by 0.15, 0.3 and 0.5 standard deviations and 1 categorical
column with new proportions; the rest drawn from the reference's distributions), the window
written with mlkube's SegmentWriter. Each tool runs in its own process so its peak RSS is its own
(os.wait4). Figures are printed, never asserted. Needs the peers, in their own venv::

    python3.11 -m venv .venv-bench
    .venv-bench/bin/pip install -e '.[runtime]' -r benchmarks/requirements-drift.txt
    .venv-bench/bin/python benchmarks/drift_benchmark.py [--mlkube-python .venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REFERENCE_ROWS = 100_000
CURRENT_ROWS = 1_000_000
SEGMENT_ROWS = 10_000
NUMERIC = [f"n{i:02d}" for i in range(15)]
CATEGORICAL = [f"c{i}" for i in range(5)]
SHIFTED_NUMERIC = {"n00": 0.5, "n01": 0.3, "n02": 0.15}
"""Column -> shift of the current sample in reference standard deviations."""
SHIFTED_CATEGORICAL = {"c0": [0.25, 0.3, 0.25, 0.2]}
TRULY_SHIFTED = sorted([*SHIFTED_NUMERIC, *SHIFTED_CATEGORICAL])

Sampler = Callable[[np.random.Generator, int], npt.NDArray[Any]]
NUMERIC_SAMPLERS: list[Sampler] = [
    lambda g, n: g.normal(0, 1, n),
    lambda g, n: g.lognormal(0, 0.5, n),
    lambda g, n: g.uniform(0, 10, n),
    lambda g, n: g.normal(5, 2, n),
    lambda g, n: g.exponential(1.0, n),
    lambda g, n: g.poisson(3, n).astype(np.float64),
    lambda g, n: g.gamma(2.0, 2.0, n),
    lambda g, n: g.beta(2.0, 5.0, n),
    lambda g, n: g.standard_t(5, n),
    lambda g, n: g.normal(-3, 0.1, n),
    lambda g, n: g.laplace(0, 1, n),
    lambda g, n: g.integers(0, 100, n).astype(np.float64),
    lambda g, n: g.weibull(1.5, n),
    lambda g, n: g.chisquare(4, n),
    lambda g, n: g.logistic(0, 1, n),
]
CATEGORIES: list[tuple[list[str], list[float]]] = [
    (["a", "b", "c", "d"], [0.4, 0.3, 0.2, 0.1]),
    (["red", "green", "blue"], [0.5, 0.3, 0.2]),
    ([f"k{i}" for i in range(8)], [1 / 8] * 8),
    (["yes", "no"], [0.7, 0.3]),
    (["s", "m", "l", "xl", "xxl"], [0.1, 0.3, 0.3, 0.2, 0.1]),
]


def generate(rows: int, seed: int, shifted: bool) -> dict[str, npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    columns: dict[str, npt.NDArray[Any]] = {}
    for name, sampler in zip(NUMERIC, NUMERIC_SAMPLERS, strict=True):
        values = sampler(rng, rows)
        if shifted and name in SHIFTED_NUMERIC:
            reference_std = float(np.std(sampler(np.random.default_rng(seed), 200_000)))
            values = values + SHIFTED_NUMERIC[name] * reference_std
        columns[name] = values
    for name, (categories, shares) in zip(CATEGORICAL, CATEGORIES, strict=True):
        drawn = SHIFTED_CATEGORICAL[name] if shifted and name in SHIFTED_CATEGORICAL else shares
        columns[name] = rng.choice(np.array(categories), p=drawn, size=rows)
    return columns


def prepare(directory: Path, reference_rows: int, current_rows: int) -> None:
    from mlkube.runtime.inference_log import SegmentWriter

    pq.write_table(pa.table(generate(reference_rows, 1, False)), directory / "reference.parquet")
    current = generate(current_rows, 2, True)
    predictions = np.random.default_rng(3).integers(0, 2, current_rows)
    writer = SegmentWriter(str(directory / "log"), "bench", max_rows=SEGMENT_ROWS, max_seconds=60)
    for start in range(0, current_rows, SEGMENT_ROWS):
        stop = start + SEGMENT_ROWS
        writer.append({k: v[start:stop] for k, v in current.items()}, predictions[start:stop])
        writer.flush()
    writer.close()
    pq.write_table(pa.table(current), directory / "current.parquet")


# --- children: each prints one JSON line -------------------------------------------------------


def child_mlkube(directory: Path) -> dict[str, Any]:
    from mlkube.api.driftmonitor import DriftMonitorSpec
    from mlkube.runtime.drift import detect_drift, read_reference
    from mlkube.runtime.inference_log import read_window

    spec = DriftMonitorSpec(deployment="bench", window={"rows": CURRENT_ROWS})
    started = time.perf_counter()
    reference = read_reference(str(directory / "reference.parquet"))
    current = read_window(str(directory / "log"), rows=CURRENT_ROWS, columns=reference.column_names)
    read = time.perf_counter()
    cpu = time.process_time()
    report = detect_drift(reference, current, spec)
    done = time.perf_counter()
    return {
        "compute_s": done - read,
        "compute_cpu_s": time.process_time() - cpu,
        "total_s": done - started,
        "flagged": report.drifted_columns,
        "numpy": np.__version__,
    }


def child_scipy_check(directory: Path) -> dict[str, Any]:
    """mlkube's figures against scipy's own functions, column by column."""
    from scipy import stats
    from scipy.spatial import distance

    from mlkube.api.driftmonitor import DriftMonitorSpec
    from mlkube.runtime.drift import detect_drift

    reference = pq.read_table(directory / "reference.parquet")
    current = pq.read_table(directory / "current.parquet")
    report = detect_drift(reference, current, DriftMonitorSpec(deployment="bench"))
    worst_p = worst_statistic = 0.0
    for column in report.columns:
        ref = reference.column(column.name).to_numpy()
        cur = current.column(column.name).to_numpy()
        if column.kind == "Numeric":
            ks = stats.ks_2samp(ref, cur)
            expected_p, expected_statistic = float(ks.pvalue), float(ks.statistic)
            expected_distance = stats.wasserstein_distance(ref, cur) / np.std(ref)
        else:
            categories = np.union1d(ref, cur)
            table = np.vstack(
                [
                    (ref[:, None] == categories).sum(axis=0),
                    (cur[:, None] == categories).sum(axis=0),
                ]
            )
            chi2 = stats.chi2_contingency(table, correction=False)
            expected_p, expected_statistic = float(chi2.pvalue), float(chi2.statistic)
            shares = table / table.sum(axis=1, keepdims=True)
            expected_distance = distance.jensenshannon(shares[0], shares[1], base=2)
        assert column.p_value is not None and column.distance is not None
        worst_p = max(worst_p, abs(column.p_value - expected_p))
        worst_statistic = max(
            worst_statistic,
            abs(column.statistic - expected_statistic) / max(1.0, abs(expected_statistic)),
            abs(column.distance - float(expected_distance)),
        )
    return {"max_abs_p_diff": worst_p, "max_statistic_diff": worst_statistic}


def _frames(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    started = time.perf_counter()
    reference = pq.read_table(directory / "reference.parquet").to_pandas()
    current = pq.read_table(directory / "current.parquet").to_pandas()
    return reference, current, time.perf_counter() - started


def child_evidently(directory: Path) -> dict[str, Any]:
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current, read_s = _frames(directory)
    started = time.perf_counter()
    cpu = time.process_time()
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    done = time.perf_counter()
    cpu = time.process_time() - cpu
    flagged = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config["type"].endswith("ValueDrift"):
            continue
        is_p_value = "p_value" in config["method"]
        value, threshold = metric["value"], config["threshold"]
        if (value < threshold) if is_p_value else (value >= threshold):
            flagged.append(config["column"])
    return {
        "compute_s": done - started,
        "compute_cpu_s": cpu,
        "total_s": done - started + read_s,
        "flagged": sorted(flagged),
        "version": evidently.__version__,
    }


def child_alibi(directory: Path) -> dict[str, Any]:
    import alibi_detect
    from alibi_detect.cd import TabularDrift

    reference, current, read_s = _frames(directory)
    started = time.perf_counter()
    cpu = time.process_time()
    columns = NUMERIC + CATEGORICAL
    x_ref = np.empty((len(reference), len(columns)), dtype=np.float64)
    x_cur = np.empty((len(current), len(columns)), dtype=np.float64)
    for i, name in enumerate(columns):
        if name in CATEGORICAL:
            codes = pd.Categorical(pd.concat([reference[name], current[name]])).codes
            x_ref[:, i], x_cur[:, i] = codes[: len(reference)], codes[len(reference) :]
        else:
            x_ref[:, i], x_cur[:, i] = reference[name], current[name]
    # Alibi's batch rule is Bonferroni; applying its threshold per feature flags columns alike.
    detector = TabularDrift(
        x_ref,
        p_val=0.05 / len(columns),
        categories_per_feature={columns.index(c): None for c in CATEGORICAL},
    )
    prediction = detector.predict(x_cur, drift_type="feature")
    done = time.perf_counter()
    is_drift = prediction["data"]["is_drift"]
    return {
        "compute_s": done - started,
        "compute_cpu_s": time.process_time() - cpu,
        "total_s": done - started + read_s,
        "flagged": sorted(c for c, d in zip(columns, is_drift, strict=True) if d),
        "version": alibi_detect.__version__,
    }


CHILDREN: dict[str, Callable[[Path], dict[str, Any]]] = {
    "mlkube": child_mlkube,
    "scipy-check": child_scipy_check,
    "evidently": child_evidently,
    "alibi": child_alibi,
}


# --- parent ------------------------------------------------------------------------------------


@dataclass
class Measured:
    label: str
    result: dict[str, Any]
    process_s: float
    peak_mb: float


def run_child(python: str, kind: str, directory: Path, label: str) -> Measured:
    started = time.perf_counter()
    process = subprocess.Popen(
        [python, __file__, "--child", kind, "--data", str(directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        return Measured(label, {"error": f"exit {process.returncode}"}, elapsed, 0.0)
    result = json.loads(output.strip().splitlines()[-1])
    return Measured(label, result, elapsed, usage.ru_maxrss / 1024)


def table(rows: list[Measured], check: Measured | None) -> str:
    header = (
        f"{'tool':<28}{'compute s':>10}{'cpu s':>7}{'incl. read s':>13}{'process s':>10}"
        f"{'peak MB':>9}"
        f"{'flagged':>8}{'TP':>4}{'FP':>4}{'FN':>4}  max|p-scipy p|"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        if "error" in row.result:
            lines.append(f"{row.label:<28}{row.result['error']}")
            continue
        flagged = set(row.result["flagged"])
        tp = len(flagged & set(TRULY_SHIFTED))
        gap = ""
        if row.label.startswith("mlkube") and check is not None and "error" not in check.result:
            gap = f"{check.result['max_abs_p_diff']:.1e}"
        lines.append(
            f"{row.label:<28}{row.result['compute_s']:>10.3f}{row.result['compute_cpu_s']:>7.2f}"
            f"{row.result['total_s']:>13.3f}"
            f"{row.process_s:>10.2f}{row.peak_mb:>9.0f}{len(flagged):>8}{tp:>4}"
            f"{len(flagged) - tp:>4}{len(TRULY_SHIFTED) - tp:>4}  {gap}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--data", type=Path)
    parser.add_argument(
        "--mlkube-python",
        action="append",
        default=[],
        help="interpreter(s) for the mlkube run (default: this one); repeat to compare",
    )
    parser.add_argument("--reference-rows", type=int, default=REFERENCE_ROWS)
    parser.add_argument("--current-rows", type=int, default=CURRENT_ROWS)
    parser.add_argument("--skip", action="append", default=[], choices=["evidently", "alibi"])
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="mlkube runs per interpreter; the table shows the best",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.data)))
        return

    with tempfile.TemporaryDirectory(prefix="mlkube-drift-bench-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        prepare(directory, args.reference_rows, args.current_rows)
        segments = len(list((directory / "log").glob("*.parquet")))
        print(
            f"data: reference {args.reference_rows:,} rows, window {args.current_rows:,} rows in "
            f"{segments} segments, {len(NUMERIC)} numeric + {len(CATEGORICAL)} categorical "
            f"columns; truly shifted: {', '.join(TRULY_SHIFTED)} "
            f"(prepared in {time.perf_counter() - started:.1f} s)"
        )
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        os.sync()  # the segments just written must not be flushed to disk during a measurement
        rows = []
        repeats: list[str] = []
        for python in args.mlkube_python or [sys.executable]:
            runs = [run_child(python, "mlkube", directory, "mlkube") for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r.result.get("total_s", float("inf")))
            best.label = f"mlkube (numpy {best.result.get('numpy', '?')})"
            rows.append(best)
            repeats.append(
                f"{best.label}, {args.repeat} runs, compute/incl. read s: "
                + ", ".join(
                    f"{r.result['compute_s']:.3f}/{r.result['total_s']:.3f}"
                    for r in runs
                    if "compute_s" in r.result
                )
            )
        check = run_child(sys.executable, "scipy-check", directory, "scipy check")
        for peer in ("evidently", "alibi"):
            if peer not in args.skip:
                measured = run_child(sys.executable, peer, directory, peer)
                name = "Evidently" if peer == "evidently" else "Alibi Detect"
                measured.label = f"{name} {measured.result.get('version', '')}".strip()
                rows.append(measured)
        print(table(rows, check))
        if "error" not in check.result:
            print(
                f"mlkube vs scipy (ks_2samp, wasserstein_distance, chi2_contingency, "
                f"jensenshannon): max |p diff| {check.result['max_abs_p_diff']:.2e}, "
                f"max statistic/distance diff {check.result['max_statistic_diff']:.2e}"
            )
        print("\n".join(repeats))
        for row in rows:
            if "flagged" in row.result:
                print(f"{row.label}: flagged {', '.join(row.result['flagged']) or 'nothing'}")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
