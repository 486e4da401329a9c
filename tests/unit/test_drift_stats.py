from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from scipy.spatial import distance

from mlkube.api.driftmonitor import ColumnOverride, ColumnResult, DriftMonitorSpec, DriftRun, Window
from mlkube.runtime.drift import (
    CategoryCounts,
    ColumnDrift,
    DriftReport,
    _NumericReference,
    _Plan,
    category_counts,
    chi_squared,
    chi_squared_goodness_of_fit,
    detect_drift,
    detect_window_drift,
    jensen_shannon,
    kolmogorov_sf,
    normalised_wasserstein,
    numeric_psi,
    numeric_statistics,
    two_proportion_z,
)
from mlkube.runtime.inference_log import TS_COLUMN, read_window, segment_name
from mlkube.runtime.log_window import open_window

pytestmark = pytest.mark.unit

TOLERANCE = 1e-9


def _spec(**fields: Any) -> DriftMonitorSpec:
    return DriftMonitorSpec(deployment="iris", **fields)


@pytest.mark.parametrize(
    ("m", "n", "decimals"),
    [
        (300, 450, None),  # exact p-value
        (800, 9_000, 1),  # exact, heavy ties
        (20_000, 50_000, None),  # asymptotic
        (30_000, 200_000, 2),  # asymptotic with ties
    ],
)
def test_numeric_statistics_equal_scipy(m: int, n: int, decimals: int | None) -> None:
    rng = np.random.default_rng(m)
    reference = rng.normal(size=m)
    current = rng.normal(0.02, 1.1, size=n)
    if decimals is not None:
        reference, current = np.round(reference, decimals), np.round(current, decimals)
    ours = numeric_statistics(reference, current)
    ks = stats.ks_2samp(reference, current)
    assert abs(ours.ks_statistic - ks.statistic) < TOLERANCE
    assert abs(ours.ks_p_value - ks.pvalue) < TOLERANCE
    assert abs(ours.wasserstein - stats.wasserstein_distance(reference, current)) < TOLERANCE
    assert normalised_wasserstein(ours.wasserstein, reference) == pytest.approx(
        stats.wasserstein_distance(reference, current) / np.std(reference), abs=TOLERANCE
    )


@pytest.mark.parametrize("n", [50, 141, 1_000, 90_909, 300_000])
def test_kolmogorov_sf_equals_scipy_in_every_branch(n: int) -> None:
    for d in [0.3 / n, 0.9 / n, 1.5 / n, *np.sqrt(np.array([0.5, 2.1, 2.2, 5, 40, 369]) / n)]:
        assert abs(kolmogorov_sf(float(d), float(n)) - stats.kstwo.sf(d, n)) < TOLERANCE
    for d in [0.5, 0.7, 1 - 1.5 / n, 1.0]:
        assert abs(kolmogorov_sf(d, float(n)) - stats.kstwo.sf(d, n)) < TOLERANCE


def test_identical_samples_have_no_distance() -> None:
    values = np.random.default_rng(0).normal(size=20_000)
    ours = numeric_statistics(values, values[::-1].copy())
    assert ours.ks_statistic == 0
    assert ours.ks_p_value == pytest.approx(1.0)
    assert ours.wasserstein == pytest.approx(0.0, abs=1e-15)


def _counts(reference: list[str], current: list[str]) -> CategoryCounts:
    return category_counts(pa.chunked_array([reference]), pa.chunked_array([current]))


def test_categorical_statistics_equal_scipy() -> None:
    rng = np.random.default_rng(7)
    reference = rng.choice(["a", "b", "c", "d"], p=[0.4, 0.3, 0.2, 0.1], size=5_000).tolist()
    current = rng.choice(["a", "b", "c", "e"], p=[0.35, 0.3, 0.25, 0.1], size=20_000).tolist()
    counts = _counts(reference, current)
    assert set(counts.categories) == set("abcde")
    table = np.vstack([counts.reference, counts.current])
    expected = stats.chi2_contingency(table, correction=False)
    statistic, p_value = chi_squared(counts)
    assert abs(statistic - expected.statistic) < TOLERANCE
    assert abs(p_value - expected.pvalue) < TOLERANCE
    ref_p = counts.reference / counts.reference.sum()
    cur_p = counts.current / counts.current.sum()
    assert abs(jensen_shannon(counts) - distance.jensenshannon(ref_p, cur_p, base=2)) < TOLERANCE
    assert 0 < jensen_shannon(counts) <= 1


def test_evidently_tests_equal_scipy() -> None:
    rng = np.random.default_rng(3)
    reference = rng.choice(["x", "y", "z"], size=900).tolist()
    current = rng.choice(["x", "y", "z"], p=[0.4, 0.3, 0.3], size=3_000).tolist()
    counts = _counts(reference, current)
    expected = stats.chisquare(
        counts.current, counts.reference * counts.current.sum() / counts.reference.sum()
    )
    statistic, p_value = chi_squared_goodness_of_fit(counts)
    assert abs(statistic - expected.statistic) < TOLERANCE
    assert abs(p_value - expected.pvalue) < TOLERANCE

    binary = _counts(rng.choice(["no", "yes"], size=700).tolist(), ["no"] * 400 + ["yes"] * 600)
    z, z_p = two_proportion_z(binary)
    # the pooled two-proportion Z-test is the 2x2 chi-squared test: z^2 = chi^2
    table = np.vstack([binary.reference, binary.current])
    chi2 = stats.chi2_contingency(table, correction=False)
    assert abs(z**2 - chi2.statistic) < 1e-6
    assert abs(z_p - chi2.pvalue) < TOLERANCE


def test_numeric_psi_bins_at_reference_deciles() -> None:
    rng = np.random.default_rng(11)
    reference = rng.normal(size=10_000)
    current = rng.normal(0.5, 1, size=10_000)
    edges = np.quantile(reference, np.linspace(0, 1, 11)[1:-1])
    ref_share = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=10) / 1e4
    cur_share = np.bincount(np.searchsorted(edges, current, side="left"), minlength=10) / 1e4
    expected = np.sum((cur_share - ref_share) * np.log(cur_share / ref_share))
    assert numeric_psi(reference, current) == pytest.approx(expected, abs=TOLERANCE)
    assert numeric_psi(reference, reference) == pytest.approx(0.0, abs=TOLERANCE)


def _uniform_columns(
    names: list[str], shifted: dict[str, float], rows: int = 2000
) -> tuple[pd.DataFrame, pd.DataFrame]:
    base = np.linspace(0, 1, rows)
    reference = pd.DataFrame({name: base for name in names})
    current = pd.DataFrame({name: base + shifted.get(name, 0.0) for name in names})
    return reference, current


def test_bonferroni_divides_p_value_by_tested_columns() -> None:
    names = [f"x{i}" for i in range(10)]
    # a 0.05 shift of 2000 evenly spaced values: KS p = 0.0135, normalised Wasserstein = 0.17
    reference, current = _uniform_columns(names, {"x0": 0.05})
    report = detect_drift(reference, current, _spec())
    x0 = report.columns[0]
    assert x0.p_value == pytest.approx(0.013465, rel=1e-3)
    assert x0.distance is not None and x0.distance > 0.1
    assert not x0.drifted  # 0.0135 >= 0.05 / 10

    alone = _spec(columns=[ColumnOverride(name=n, ignore=True) for n in names[1:]])
    report = detect_drift(reference, current, alone)
    assert [c.name for c in report.columns] == ["x0"]
    assert report.columns[0].drifted  # 0.0135 < 0.05 / 1
    assert report.verdict == "Drift"


def test_significant_but_small_is_not_drift() -> None:
    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"x": rng.normal(size=100_000)})
    current = pd.DataFrame({"x": rng.normal(0.05, 1, size=400_000)})
    column = detect_drift(reference, current, _spec()).columns[0]
    assert column.p_value is not None and column.p_value < 1e-10
    assert column.distance is not None and column.distance < 0.1
    assert not column.drifted


def test_too_few_rows_is_insufficient_data_not_drift() -> None:
    reference, current = _uniform_columns(["a", "b"], {"a": 5.0, "b": 5.0})
    report = detect_drift(reference, current.head(99), _spec(min_rows=100))
    assert report.verdict == "InsufficientData"
    assert report.rows == 99
    assert report.drifted_columns == []
    assert detect_drift(reference, current.head(100), _spec(min_rows=100)).verdict == "Drift"


def test_dataset_drift_needs_the_drifted_share() -> None:
    reference, current = _uniform_columns(["a", "b", "c", "d"], {"a": 1.0, "b": 1.0})
    report = detect_drift(reference, current, _spec(drift_share="0.5"))
    assert report.drifted_columns == ["a", "b"]
    assert report.drift_share == 0.5
    assert report.verdict == "Drift"
    assert detect_drift(reference, current, _spec(drift_share="0.75")).verdict == "NoDrift"


def test_column_overrides() -> None:
    rng = np.random.default_rng(9)
    reference = pd.DataFrame(
        {
            "x": rng.normal(size=5_000),
            "code": rng.integers(0, 4, size=5_000),
            "id": np.arange(5_000),
        }
    )
    current = pd.DataFrame(
        {
            "x": rng.normal(0.3, 1, size=5_000),
            "code": rng.choice(4, p=[0.1, 0.2, 0.3, 0.4], size=5_000),
            "id": np.arange(5_000, 10_000),
        }
    )
    default = detect_drift(reference, current, _spec())
    assert {c.name: c.test for c in default.columns} == {"x": "KS", "code": "KS", "id": "KS"}

    overrides = [
        ColumnOverride(name="id", ignore=True),
        ColumnOverride(name="code", kind="Categorical"),
        ColumnOverride(name="x", threshold="0.5"),
    ]
    report = detect_drift(reference, current, _spec(columns=overrides))
    by_name = {c.name: c for c in report.columns}
    assert set(by_name) == {"x", "code"}
    assert by_name["code"].kind == "Categorical" and by_name["code"].test == "ChiSquared"
    assert by_name["code"].drifted
    x = by_name["x"]
    assert x.distance is not None and 0.1 < x.distance < 0.5
    assert not x.drifted  # drifts at the default 0.1, not at its own 0.5

    psi = detect_drift(reference, current, _spec(columns=[ColumnOverride(name="x", test="PSI")]))
    x = next(c for c in psi.columns if c.name == "x")
    assert x.test == "PSI" and x.statistic == x.distance

    with pytest.raises(ValueError, match="does not apply"):
        detect_drift(
            reference, current, _spec(columns=[ColumnOverride(name="x", test="ChiSquared")])
        )
    with pytest.raises(ValueError, match="not tested"):
        detect_drift(reference, current, _spec(columns=[ColumnOverride(name="nope", ignore=True)]))


def test_kinds_follow_the_input_schema() -> None:
    reference = pd.DataFrame({"a": [1, 2, 3, 4] * 50, "b": ["u", "v"] * 100})
    report = detect_drift(
        reference, reference, _spec(), column_types={"a": "string", "b": "string"}
    )
    assert [(c.name, c.kind) for c in report.columns] == [
        ("a", "Categorical"),
        ("b", "Categorical"),
    ]
    with pytest.raises(ValueError, match="missing from the inference log"):
        detect_drift(reference, reference[["a"]], _spec(), column_types={"a": "int", "b": "string"})


def test_evidently_picks_its_tests_by_reference_size() -> None:
    rng = np.random.default_rng(2)

    def frame(rows: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "num": rng.normal(size=rows),
                "few": rng.integers(0, 3, size=rows).astype(float),
                "cat": rng.choice(["a", "b", "c"], size=rows),
                "flag": rng.choice(["yes", "no"], size=rows),
            }
        )

    small = detect_drift(frame(1000), frame(2000), _spec(method="Evidently"))
    assert {c.name: c.test for c in small.columns} == {
        "num": "KS",
        "few": "ChiSquared",
        "cat": "ChiSquared",
        "flag": "Z",
    }
    large = detect_drift(frame(1001), frame(2000), _spec(method="Evidently"))
    assert {c.name: c.test for c in large.columns} == {
        "num": "Wasserstein",
        "few": "JensenShannon",
        "cat": "JensenShannon",
        "flag": "JensenShannon",
    }
    assert all(c.p_value is None for c in large.columns)


def test_evidently_mode_flags_a_tiny_shift_in_a_large_window() -> None:
    """Against a 1,000-row reference Evidently treats the reference's proportions as exact, so a
    one-point change in a 200,000-row window is 'drift'; mlkube asks for a large distance too."""
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], size=1000)})
    shares = reference["colour"].value_counts(normalize=True)
    tiny_shift = [shares["red"] + 0.01, shares["green"] - 0.01, shares["blue"]]
    current = pd.DataFrame(
        {"colour": rng.choice(["red", "green", "blue"], p=tiny_shift, size=200_000)}
    )
    evidently = detect_drift(reference, current, _spec(method="Evidently"))
    ours = detect_drift(reference, current, _spec())
    assert evidently.columns[0].test == "ChiSquared" and evidently.columns[0].drifted
    assert evidently.verdict == "Drift"
    assert not ours.columns[0].drifted
    assert ours.verdict == "NoDrift"


def test_pyarrow_and_pandas_inputs_agree() -> None:
    rng = np.random.default_rng(8)
    reference = pd.DataFrame({"x": rng.normal(size=3000), "c": rng.choice(["p", "q"], size=3000)})
    current = pd.DataFrame({"x": rng.normal(size=3000), "c": rng.choice(["p", "q"], size=3000)})
    from_pandas = detect_drift(reference, current, _spec())
    from_arrow = detect_drift(
        pa.Table.from_pandas(reference), pa.Table.from_pandas(current), _spec()
    )
    assert from_pandas == from_arrow


def test_nulls_and_nans_are_left_out() -> None:
    reference = pa.table({"x": pa.array([0.1 * i for i in range(500)] + [None, float("nan")])})
    current = pa.table({"x": pa.array([0.1 * i for i in range(500)])})
    column = detect_drift(reference, current, _spec()).columns[0]
    assert column.statistic == 0 and not column.drifted


def test_json_matches_the_api_and_fits_a_termination_message() -> None:
    columns = [
        ColumnDrift(f"feature_{i:04d}", "Numeric", "KS", 0.123456789, 1e-30, 0.3, i % 3 == 0)
        for i in range(1000)
    ]
    report = DriftReport("Drift", 1_000_000, 334 / 1000, columns)
    text = report.to_json()
    assert len(text.encode()) <= 4096
    message = json.loads(text)
    run = DriftRun.model_validate({"at": "2026-01-01T00:00:00Z", **message})
    assert run.verdict == "Drift" and run.drift_share == "0.334" and run.rows == 1_000_000
    assert message["driftedColumnsOmitted"] + len(run.drifted_columns) == 334
    assert message["columnsOmitted"] + len(message["columns"]) == 1000
    results = [ColumnResult.model_validate(c) for c in message["columns"]]
    assert all(r.drifted for r in results)  # drifted columns come first
    assert results[0].statistic == "0.123457" and results[0].p_value == "1e-30"

    small = DriftReport("NoDrift", 500, 0.0, columns[1:3])
    message = json.loads(small.to_json())
    assert message == {
        "verdict": "NoDrift",
        "rows": 500,
        "driftShare": "0",
        "driftedColumns": [],
        "columns": [
            {
                "name": name,
                "test": "KS",
                "statistic": "0.123457",
                "pValue": "1e-30",
                "distance": "0.3",
                "drifted": False,
            }
            for name in ("feature_0001", "feature_0002")
        ],
    }


def test_a_column_missing_from_the_window_is_an_error_not_a_verdict() -> None:
    reference = pa.table({"x": pa.array([1.0, 2.0, 3.0] * 50), "c": pa.array(["a", "b"] * 75)})
    current = pa.table(
        {"x": pa.array([None] * 150, type=pa.float64()), "c": pa.array(["a", "b"] * 75)}
    )
    with pytest.raises(ValueError, match="'x' has no non-missing values in the window"):
        detect_drift(reference, current, _spec())
    blank = pa.table({"x": pa.array([1.0] * 150), "c": pa.array([None] * 150, type=pa.string())})
    with pytest.raises(ValueError, match="'c' has no non-missing values in the window"):
        detect_drift(reference, blank, _spec(method="Evidently"))


def test_an_int_column_with_values_beyond_2_to_the_53_is_still_tested() -> None:
    """The server takes any int64 in an int column; the check rounds them to floats, never fails
    (Arrow's safe cast refused 2**53 + 1 and every check crashed until the row aged out)."""
    rng = np.random.default_rng(3)
    reference = pa.table({"seats": pa.array(rng.integers(1, 50, 400), pa.int64())})
    current = pa.table({"seats": pa.array([*rng.integers(1, 50, 399), 2**53 + 1], pa.int64())})
    report = detect_drift(reference, current, _spec(minRows=100), {"seats": "int"})
    assert [c.name for c in report.columns] == ["seats"]


# --- windows streamed from the log -------------------------------------------------------------


def _write_log(directory: Path, frame: pd.DataFrame, segment_rows: int, writers: int = 1) -> None:
    """`frame` as segments of `segment_rows` rows from `writers` interleaving writers: segment i
    starts at second i and spans 2.5 s, so neighbours overlap in time, in steps of 10 ms that
    several rows share."""
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for number, start in enumerate(range(0, len(frame), segment_rows)):
        part = table.slice(start, segment_rows)
        steps = np.linspace(0, 2500, part.num_rows, endpoint=False) // 10 * 10
        ts = (1_700_000_000_000 + number * 1000 + steps).astype(np.int64)
        part = part.append_column(TS_COLUMN, pa.array(ts))
        name = segment_name(float(ts[-1]) / 1000, f"pod-{number % writers}", number)
        pq.write_table(part, directory / name)


def _moderate(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "normal": rng.normal(0.12 if shifted else 0, 1, rows),
            "ties": np.round(rng.normal(0, 1, rows), 1),
            "few": rng.integers(0, 3, rows).astype(float),
            "colour": rng.choice(["red", "green", "blue"], p=[0.5, 0.3, 0.2], size=rows),
        }
    )
    frame.loc[::53, "normal"] = np.nan
    if shifted:
        frame["ties"] += 0.3
    return frame


@pytest.mark.parametrize("reference_rows", [800, 3_000, 20_000])
@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"method": "Evidently"},
        {
            "columns": [
                ColumnOverride(name="normal", test="PSI"),
                ColumnOverride(name="colour", test="PSI"),
            ]
        },
        {"numericTest": "Wasserstein", "categoricalTest": "JensenShannon"},
    ],
    ids=["default", "evidently", "psi", "distances"],
)
def test_a_streamed_window_equals_the_window_in_memory(
    tmp_path: Path, reference_rows: int, fields: dict[str, Any]
) -> None:
    _write_log(tmp_path, _moderate(60_000, 1, shifted=True), segment_rows=7_000, writers=2)
    reference = pa.Table.from_pandas(_moderate(reference_rows, 2, shifted=False))
    spec = _spec(window=Window(rows=50_000), drift_share="0.25", **fields)
    exact = detect_drift(reference, read_window(str(tmp_path), rows=50_000), spec)
    for workers in (1, 3):
        streamed = detect_window_drift(
            reference, open_window(str(tmp_path), rows=50_000), spec, None, workers
        )
        assert (streamed.verdict, streamed.rows) == (exact.verdict, 50_000)
        assert streamed.drifted_columns == exact.drifted_columns
        for ours, theirs in zip(streamed.columns, exact.columns, strict=True):
            assert (ours.name, ours.test) == (theirs.name, theirs.test)
            wasserstein = ours.test == "Wasserstein" or (ours.test == "KS" and ours.distance)
            assert ours.statistic == pytest.approx(
                theirs.statistic, abs=1e-4 if ours.test == "Wasserstein" else 1e-12
            )
            assert ours.p_value == pytest.approx(theirs.p_value, abs=1e-12)
            assert ours.distance == pytest.approx(
                theirs.distance, abs=1e-4 if wasserstein else 1e-12
            )


def test_a_small_streamed_window_is_compared_exactly(tmp_path: Path) -> None:
    """At most 10,000 values per column: the values themselves, as in memory (exact KS p)."""
    _write_log(tmp_path, _moderate(9_000, 1, shifted=True), segment_rows=1_000)
    reference = pa.Table.from_pandas(_moderate(2_000, 2, shifted=False))
    spec = _spec(window=Window(rows=8_500))
    streamed = detect_window_drift(reference, open_window(str(tmp_path), rows=8_500), spec)
    exact = detect_drift(reference, read_window(str(tmp_path), rows=8_500), spec)
    assert [(c.name, c.statistic, c.p_value, c.distance) for c in streamed.columns] == [
        (c.name, c.statistic, c.p_value, c.distance) for c in exact.columns
    ]


@pytest.mark.parametrize(("m", "n", "shift"), [(10_000, 300_000, 0.0), (2_000, 300_000, 0.02)])
def test_the_streamed_wasserstein_distance_is_within_its_bound(
    m: int, n: int, shift: float
) -> None:
    rng = np.random.default_rng(m)
    reference, current = rng.normal(size=m), rng.normal(shift, 1, size=n)
    plan = _Plan("x", "Numeric", "KS", None)
    sums = _NumericReference(reference, plan, _spec()).start()
    for part in np.array_split(current, 7):
        sums.add(pa.array(part))
    ours = sums.result().statistics()
    exact = stats.wasserstein_distance(reference, current)
    assert ours.ks_statistic == stats.ks_2samp(reference, current).statistic
    assert abs(ours.wasserstein - exact) <= ours.wasserstein_error
    assert 0 < ours.wasserstein_error < 1e-3  # a hundredth of the default threshold (std 1)
    far = _NumericReference(reference, plan, _spec()).start()
    far.add(pa.array(current + 3))  # the ECDFs never cross: exact
    assert far.result().statistics().wasserstein_error == 0
    assert far.result().statistics().wasserstein == pytest.approx(
        stats.wasserstein_distance(reference, current + 3), rel=1e-12
    )


def test_a_streamed_window_holds_the_rows_read_window_returns(tmp_path: Path) -> None:
    """Row and time windows keep their meaning: the same rows, ties at the edge included."""
    frame = pd.DataFrame({"x": np.arange(30_000, dtype=np.float64)})
    _write_log(tmp_path, frame, segment_rows=2_500, writers=3)
    now = 1_700_000_000 + 14
    windows = [(10_000, None), (12_345, None), (None, 5), (4_000, 8), (50_000, None), (None, 1)]
    for rows, seconds in windows:
        expected = read_window(str(tmp_path), rows=rows, seconds=seconds, now=now)
        window = open_window(str(tmp_path), rows=rows, seconds=seconds, now=now)
        seen: list[list[float]] = window.scan(
            ["x"], list, lambda values, batch: values.extend(batch.column("x").to_pylist()), 2
        )
        streamed = sorted(v for part in seen for v in part)
        assert window.rows == expected.num_rows == len(streamed)
        assert streamed == sorted(expected.column("x").to_pylist())


def test_the_report_names_the_version_and_the_reason_within_the_termination_message() -> None:
    columns = [
        ColumnDrift(f"feature_{i:04d}", "Numeric", "KS", 0.123456789, 1e-30, 0.3, i % 3 == 0)
        for i in range(1000)
    ]
    report = DriftReport("Error", 5, 0.0, columns, "churn-model-17", "x" * 5000)
    text = report.to_json()
    assert len(text.encode()) <= 4096
    message = json.loads(text)
    assert message["modelVersion"] == "churn-model-17"
    assert message["message"] == "x" * 1024
    run = DriftRun.model_validate({"at": "2026-01-01T00:00:00Z", **message})
    assert run.verdict == "Error"
