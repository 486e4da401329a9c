"""Live quality without a store: metrics against scikit-learn's, the join, slices, verdicts,
CBPE and the calibration."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)

from mlkube.api.driftmonitor import Performance
from mlkube.layout import (
    FEEDBACK_LABEL_COLUMN,
    FEEDBACK_REQUEST_ID_COLUMN,
    LOG_CLASSES_METADATA,
    LOG_MODEL_VERSION_COLUMN,
    LOG_PREDICTION_COLUMN,
    LOG_PROBABILITIES_COLUMN,
    LOG_REQUEST_ID_COLUMN,
    LOG_TS_COLUMN,
)
from mlkube.runtime.quality import (
    RESULT_BYTES,
    Calibration,
    Counts,
    PerformanceReport,
    QualityError,
    SliceQuality,
    Slices,
    encode_classes,
    estimate_performance,
    evaluate_window,
    expected_calibration_error,
    fit_calibration,
    macro_f1,
    merge_feedback,
    roc_auc,
    verdict,
    weighted_roc_auc,
)
from mlkube.runtime.quality import accuracy as quality_accuracy
from mlkube.runtime.quality import mae as quality_mae
from mlkube.runtime.quality import rmse as quality_rmse

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
DAY_MS = 86_400_000


def performance(**fields: Any) -> Performance:
    return Performance.model_validate(fields)


def log_window(
    ids: list[str],
    predictions: list[Any],
    ts: list[int],
    probabilities: np.ndarray | None = None,
    classes: list[Any] | None = None,
    version: str = "v1",
    **features: list[Any],
) -> pa.Table:
    """A window in layout.py's shape."""
    columns: dict[str, Any] = {
        **features,
        LOG_PREDICTION_COLUMN: pa.array(predictions),
        LOG_TS_COLUMN: pa.array(ts, pa.int64()),
        LOG_REQUEST_ID_COLUMN: pa.array(ids, pa.string()),
        LOG_MODEL_VERSION_COLUMN: pa.array([version] * len(ids), pa.string()),
    }
    metadata = None
    if probabilities is not None:
        assert classes is not None
        columns[LOG_PROBABILITIES_COLUMN] = pa.FixedSizeListArray.from_arrays(
            pa.array(probabilities.ravel(), pa.float64()), len(classes)
        )
        metadata = {LOG_CLASSES_METADATA: json.dumps(classes).encode()}
    return pa.table(columns, metadata=metadata)


def labels(
    ids: list[str], values: list[Any], ts: list[int | None], **outcomes: list[float]
) -> pa.Table:
    return pa.table(
        {
            FEEDBACK_REQUEST_ID_COLUMN: pa.array(ids, pa.string()),
            FEEDBACK_LABEL_COLUMN: pa.array(values),
            LOG_TS_COLUMN: pa.array(ts, pa.int64()),
            **{k: pa.array(v, pa.float64()) for k, v in outcomes.items()},
        }
    )


def evaluate(
    window: pa.Table,
    feedback_tables: list[pa.Table],
    spec: Performance | None = None,
    logged_ids: list[str] | None = None,
    **options: Any,
) -> PerformanceReport:
    spec = spec or performance(minLabelledRows=1)
    ids = logged_ids if logged_ids is not None else window.column(LOG_REQUEST_ID_COLUMN).to_pylist()
    options.setdefault("task", "classification")
    return evaluate_window(
        spec,
        "v1",
        window,
        merge_feedback(feedback_tables, outcomes=[o.name for o in spec.outcomes]),
        pa.array(ids, pa.string()),
        now=NOW,
        **options,
    )


# --- metrics against scikit-learn --------------------------------------------------------------


def _random_probabilities(rng: np.random.Generator, rows: int, classes: int) -> np.ndarray:
    raw = rng.random((rows, classes)) ** 3
    rounded = np.round(raw / raw.sum(axis=1, keepdims=True), 2)  # ties, as real scores have
    rounded[:, -1] = 1 - rounded[:, :-1].sum(axis=1)
    return rounded


@pytest.mark.parametrize("classes", [["no", "yes"], [0, 1], ["a", "b", "c", "d"], [3, 5, 7]])
def test_classification_metrics_equal_sklearns(classes: list[Any]) -> None:
    rng = np.random.default_rng(7)
    rows = 3000
    probabilities = _random_probabilities(rng, rows, len(classes))
    truth = np.array(classes, dtype=object)[rng.integers(0, len(classes), rows)]
    predicted = np.array(classes, dtype=object)[rng.integers(0, len(classes), rows)]
    truth_list, predicted_list = truth.tolist(), predicted.tolist()
    encoded = encode_classes(truth_list, predicted_list, classes)
    assert quality_accuracy(encoded.truth, encoded.predicted) == pytest.approx(
        accuracy_score(truth_list, predicted_list), abs=1e-12
    )
    assert macro_f1(encoded.truth, encoded.predicted, encoded.size) == pytest.approx(
        f1_score(truth_list, predicted_list, average="macro"), abs=1e-12
    )
    expected_auc = (
        roc_auc_score(truth_list, probabilities[:, 1])
        if len(classes) == 2
        else roc_auc_score(truth_list, probabilities, multi_class="ovr", average="macro")
    )
    assert roc_auc(encoded.truth, probabilities) == pytest.approx(expected_auc, abs=1e-12)


def test_macro_f1_counts_classes_seen_only_in_predictions_or_labels_as_sklearn_does() -> None:
    truth = ["a", "a", "b", "b", "zebra"]
    predicted = ["a", "c", "b", "a", "a"]
    encoded = encode_classes(truth, predicted, ["a", "b", "c", "d"])
    assert encoded.size == 5  # "zebra" is outside the classes: its own position, always wrong
    assert macro_f1(encoded.truth, encoded.predicted, encoded.size) == pytest.approx(
        f1_score(truth, predicted, average="macro", zero_division=0), abs=1e-12
    )


def test_labels_of_another_type_than_the_classes_are_read_as_the_classes() -> None:
    # a bulk CSV gives int64 labels; the classes (schema.json) are text
    assert encode_classes(pa.array([0, 1, 1]), ["1", "1", "0"], ["0", "1"]).truth.tolist() == [
        0,
        1,
        1,
    ]
    # the reverse: text labels for integer predictions, and 1.0 for the class 1
    encoded = encode_classes(["1", "0", "1.0", "true"], [1, 0, 0, 1], [0, 1])
    assert encoded.truth.tolist() == [1, 0, 1, 1]
    assert encoded.size == 2
    # text classes stay text: an integral float label 3.0 is "3"
    encoded = encode_classes(pa.array([3.0, 4.0]), ["x", "3"], ["3", "x"])
    assert encoded.truth.tolist() == [0, 2]
    assert encoded.predicted.tolist() == [1, 0]


def test_regression_metrics_equal_sklearns() -> None:
    rng = np.random.default_rng(3)
    truth, predicted = rng.normal(size=500), rng.normal(size=500)
    assert quality_rmse(truth, predicted) == pytest.approx(
        root_mean_squared_error(truth, predicted), abs=1e-12
    )
    assert quality_mae(truth, predicted) == pytest.approx(
        mean_absolute_error(truth, predicted), abs=1e-12
    )
    assert quality_rmse(np.empty(0), np.empty(0)) is None


def test_roc_auc_is_undefined_with_one_class_in_the_labels() -> None:
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert roc_auc(np.array([1, 1]), probabilities) is None
    three = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert roc_auc(np.array([2, 2]), three) is None
    assert quality_accuracy(np.empty(0, np.int64), np.empty(0, np.int64)) is None
    assert macro_f1(np.empty(0, np.int64), np.empty(0, np.int64), 2) is None


def test_one_class_labelled_gives_insufficient_labels_for_roc_auc_not_a_crash() -> None:
    window = log_window(
        ["r1", "r2"], ["1", "0"], [NOW_MS - DAY_MS] * 2, np.array([[0.3, 0.7], [0.6, 0.4]]), [0, 1]
    )
    report = evaluate(
        window,
        [labels(["r1", "r2"], ["1", "1"], [NOW_MS, NOW_MS])],
        performance(metric="RocAuc", minLabelledRows=1),
    )
    assert report.verdict == "InsufficientLabels"
    assert report.metrics["roc_auc"] is None
    assert "single class" in (report.reason or "")
    assert report.metrics["accuracy"] == 0.5


# --- the join ----------------------------------------------------------------------------------


def test_join_late_pending_duplicates_and_unknown_ids() -> None:
    old = NOW_MS - 3 * DAY_MS
    young = NOW_MS - 3_600_000
    window = log_window(
        ["a", "b", "c", "d", "e", "f"],
        ["x", "y", "x", "y", "x", "y"],
        [old, old, old, old, young, young],
    )
    posted = labels(
        ["a", "b", "c", "a", "e", "ghost", "other-version-row"],
        ["x", "x", "x", "y", "x", "x", "y"],
        [
            old + 1000,
            old + 2000,
            old + 2 * DAY_MS,  # c: two days after its prediction, delay one day: late
            old + 5000,  # a: the correction wins
            young + 1000,  # e: young but labelled: counts
            NOW_MS,
            NOW_MS,
        ],
    )
    bulk = labels(["b", "d"], ["y", "y"], [None, None])  # b: older than the posted label
    report = evaluate(
        window,
        [bulk, posted],
        logged_ids=["a", "b", "c", "d", "e", "f", "other-version-row"],
    )
    counts = report.counts
    assert counts.rows == 6
    assert counts.labelled == 4  # a (y, corrected), b (x, posted beats bulk), d (y, bulk), e
    assert counts.late == 1  # c
    assert counts.pending == 1  # f: young without a label; e is labelled
    assert counts.duplicates == 2  # a's first label, b's bulk one
    assert counts.unknown_ids == 1  # ghost; other-version-row is logged under another version
    assert counts.labelled_share == pytest.approx(4 / 5)
    # a: y vs x wrong; b: x vs y wrong; d: y vs y right; e: x vs x right
    assert report.metrics["accuracy"] == 0.5


def test_a_label_for_a_version_no_longer_served_is_reported_under_that_version() -> None:
    old = NOW_MS - 2 * DAY_MS
    retired = log_window(["v0-1", "v0-2"], ["x", "y"], [old, old], version="v0")
    feedback = [labels(["v0-1", "v0-2", "v1-1"], ["x", "x", "y"], [old + 1, old + 1, old + 1])]
    all_ids = ["v0-1", "v0-2", "v1-1"]
    report = evaluate(retired, feedback, logged_ids=all_ids)
    assert report.counts.labelled == 2
    assert report.counts.unknown_ids == 0
    assert report.metrics["accuracy"] == 0.5


def test_an_empty_window_reports_zero_rows() -> None:
    empty = pa.table({LOG_TS_COLUMN: pa.array([], pa.int64())})
    report = evaluate(empty, [labels(["a"], ["x"], [NOW_MS])], logged_ids=[])
    assert report.counts == Counts(0, 0, 0, 0, 0, 1)
    assert report.verdict == "InsufficientLabels"
    assert report.value is None


def test_outcomes_are_summed_or_averaged_over_labelled_rows() -> None:
    old = NOW_MS - 2 * DAY_MS
    window = log_window(["a", "b", "c"], [1, 0, 1], [old] * 3)
    spec = performance(
        minLabelledRows=1,
        outcomes=[{"name": "revenue"}, {"name": "clicks", "aggregate": "Mean"}],
    )
    feedback = labels(
        ["a", "b", "zzz"],
        [1, 1, 0],
        [old + 1] * 3,
        revenue=[10.0, 2.5, 100.0],
        clicks=[1.0, 3.0, 9.0],
    )
    report = evaluate(window, [feedback], spec)
    assert report.outcomes == {"revenue": ("Sum", 12.5, 2), "clicks": ("Mean", 2.0, 2)}


# --- slices ------------------------------------------------------------------------------------


def test_slices_give_the_metric_per_value_and_the_worst_gap() -> None:
    rng = np.random.default_rng(11)
    rows = 2000
    country = rng.choice(["de", "fr", "it", "es"], size=rows, p=[0.4, 0.3, 0.2, 0.1])
    truth = rng.integers(0, 2, rows)
    wrong = rng.random(rows) < np.where(country == "it", 0.5, 0.1)  # "it" is served worse
    predicted = np.where(wrong, 1 - truth, truth)
    ids = [f"r{i}" for i in range(rows)]
    old = NOW_MS - 2 * DAY_MS
    window = log_window(ids, predicted.tolist(), [old] * rows, country=country.tolist())
    report = evaluate(
        window,
        [labels(ids, truth.tolist(), [old + 1] * rows)],
        performance(minLabelledRows=1, sliceBy="country"),
    )
    slices = report.slices
    assert slices is not None and slices.worst is not None
    assert [s.value for s in slices.slices] == ["de", "fr", "it", "es"]
    for s in slices.slices:
        mine = country == s.value
        assert s.metric == pytest.approx(accuracy_score(truth[mine], predicted[mine]), abs=1e-12)
    assert slices.worst.value == "it"
    whole = accuracy_score(truth, predicted)
    assert slices.gap == pytest.approx(whole - slices.worst.metric, abs=1e-12)
    assert report.to_result()["slices"]["worst"][0][0] == "it"


def test_slices_keep_the_20_largest_and_rmse_slices_rank_by_the_larger_error() -> None:
    rows = 30 * 25
    segment = [f"s{i % 25:02d}" for i in range(rows)]
    truth = np.zeros(rows)
    predicted = np.array([3.0 if s == "s07" else 0.5 for s in segment])
    ids = [f"r{i}" for i in range(rows)]
    window = log_window(ids, predicted.tolist(), [NOW_MS - DAY_MS - 1] * rows, segment=segment)
    report = evaluate(
        window,
        [labels(ids, truth.tolist(), [NOW_MS - DAY_MS] * rows)],
        performance(minLabelledRows=1, sliceBy="segment"),
        task="regression",
    )
    assert report.metric == "Rmse"
    assert report.slices is not None and report.slices.worst is not None
    assert len(report.slices.slices) == 20
    assert report.slices.worst.value == "s07"
    assert report.slices.gap is not None and report.slices.gap > 0
    assert report.value == pytest.approx(root_mean_squared_error(truth, predicted), abs=1e-12)


def test_a_slice_column_missing_from_the_log_gives_a_reason() -> None:
    window = log_window(["a"], ["x"], [NOW_MS - 2 * DAY_MS])
    report = evaluate(
        window,
        [labels(["a"], ["x"], [NOW_MS - 2 * DAY_MS])],
        performance(minLabelledRows=1, sliceBy="region"),
    )
    assert report.slices is not None
    assert report.slices.reason == "sliceBy column 'region' is not in the inference log"
    assert report.to_result()["slices"]["reason"].startswith("sliceBy column 'region'")


# --- verdicts ----------------------------------------------------------------------------------


def test_verdict_rules() -> None:
    assert verdict(performance(minLabelledRows=100), "Accuracy", 0.2, 99, 0.9)[0] == (
        "InsufficientLabels"
    )
    assert verdict(performance(), "Accuracy", 0.2, 500, 0.9)[0] == "Healthy"  # report only
    assert verdict(performance(threshold="0.8"), "Accuracy", 0.79, 500, None)[0] == "Degraded"
    assert verdict(performance(threshold="0.8"), "Accuracy", 0.8, 500, None)[0] == "Healthy"
    assert verdict(performance(threshold="2.0"), "Rmse", 2.1, 500, None)[0] == "Degraded"
    assert verdict(performance(threshold="2.0"), "Rmse", 1.9, 500, None)[0] == "Healthy"
    dropped, reason = verdict(performance(maxDrop="0.05"), "F1", 0.84, 500, 0.9)
    assert dropped == "Degraded"
    assert "maxDrop 0.05" in (reason or "")
    assert verdict(performance(maxDrop="0.05"), "F1", 0.86, 500, 0.9)[0] == "Healthy"
    assert verdict(performance(maxDrop="0.5"), "Mae", 1.6, 500, 1.0)[0] == "Degraded"
    assert verdict(performance(maxDrop="0.5"), "Mae", 0.2, 500, 1.0)[0] == "Healthy"
    with pytest.raises(QualityError, match="offline roc_auc"):
        verdict(performance(maxDrop="0.05"), "RocAuc", 0.8, 500, None)


def test_metric_defaults_by_task_and_must_fit_it() -> None:
    old = NOW_MS - 2 * DAY_MS
    window = log_window(["a"], ["x"], [old])
    feedback = [labels(["a"], ["x"], [old])]
    assert evaluate(window, feedback).metric == "Accuracy"
    with pytest.raises(QualityError, match="Rmse does not apply to a classification model"):
        evaluate(window, feedback, performance(metric="Rmse"))
    with pytest.raises(QualityError, match="RocAuc needs logged probabilities"):
        evaluate(window, feedback, performance(metric="RocAuc"))


def test_max_drop_compares_with_the_offline_metric() -> None:
    old = NOW_MS - 2 * DAY_MS
    ids = [f"r{i}" for i in range(10)]
    window = log_window(ids, ["x"] * 10, [old] * 10)
    feedback = [labels(ids, ["x"] * 7 + ["y"] * 3, [old] * 10)]
    report = evaluate(
        window,
        feedback,
        performance(maxDrop="0.1", minLabelledRows=10),
        offline_metrics={"accuracy": 0.95, "f1": 0.9},
    )
    assert report.verdict == "Degraded"
    assert report.offline == 0.95
    assert report.value == pytest.approx(0.7)


# --- CBPE --------------------------------------------------------------------------------------


def test_estimated_roc_auc_is_nannymls_expected_roc_area() -> None:
    rng = np.random.default_rng(5)
    p = np.round(rng.random(400), 2)
    # each row a positive of weight p and a negative of weight 1 - p
    expected = roc_auc_score(
        np.r_[np.ones(400), np.zeros(400)], np.r_[p, p], sample_weight=np.r_[p, 1 - p]
    )
    assert weighted_roc_auc(p, p, 1 - p) == pytest.approx(expected, abs=1e-12)
    estimated = estimate_performance(np.c_[1 - p, p], (p >= 0.5).astype(np.int64))
    assert estimated["roc_auc"] == pytest.approx(expected, abs=1e-12)
    assert estimated["accuracy"] == pytest.approx(np.mean(np.maximum(p, 1 - p)), abs=1e-12)


def _synthetic(
    rng: np.random.Generator, rows: int, shift: float, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A well-specified logistic problem: P(y=1|x) = sigmoid(2 x0 - x1)."""
    x = rng.normal(loc=[shift, 0.0], scale=[1.0 - shift / 2, 1.0], size=(rows, 2))
    logit = 2 * x[:, 0] - x[:, 1]
    if flip:  # concept drift: the relation itself changed
        logit = -logit
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return x, y


def _cbpe_case(flip: bool) -> tuple[float, float, PerformanceReport]:
    rng = np.random.default_rng(2024)
    x_train, y_train = _synthetic(rng, 6000, 0.0)
    model = LogisticRegression().fit(x_train, y_train)
    x_live, y_live = _synthetic(rng, 5000, 1.0, flip=flip)  # shifted, inside the training range
    assert x_live[:, 0].max() < x_train[:, 0].max() + 1
    probabilities = model.predict_proba(x_live)
    predicted = model.predict(x_live)
    ids = [f"r{i}" for i in range(len(y_live))]
    old = NOW_MS - 2 * DAY_MS
    window = log_window(ids, predicted.tolist(), [old] * len(ids), probabilities, [0, 1])
    report = evaluate(window, [labels(ids, y_live.tolist(), [old] * len(ids))])
    estimated = report.estimated["accuracy"]
    realised = report.metrics["accuracy"]
    assert estimated is not None and realised is not None
    return estimated, realised, report


def test_cbpe_follows_covariate_shift_within_the_training_range() -> None:
    estimated, realised, report = _cbpe_case(flip=False)
    assert abs(estimated - realised) < 0.02
    for key in ("f1", "roc_auc"):
        assert report.estimated[key] == pytest.approx(report.metrics[key], abs=0.02)
    assert report.estimate_gap is not None and abs(report.estimate_gap) < 0.02


def test_cbpe_cannot_see_concept_drift() -> None:
    estimated, realised, report = _cbpe_case(flip=True)
    assert estimated > 0.8  # the model is as confident as ever
    assert realised < 0.2  # and wrong
    assert report.estimate_gap is not None and report.estimate_gap < -0.6


# --- calibration -------------------------------------------------------------------------------


def test_calibration_is_kept_when_it_lowers_the_expected_calibration_error() -> None:
    rng = np.random.default_rng(1)
    true_p = rng.random(3000)
    y = (rng.random(3000) < true_p).astype(np.int64)
    overconfident = 1 / (1 + np.exp(-4 * np.log(true_p / (1 - true_p))))
    raw = np.c_[1 - overconfident, overconfident]
    calibration = fit_calibration([0, 1], raw, y)
    assert calibration is not None
    assert list(calibration.knots) == [1]
    calibrated = calibration.apply(raw)
    assert np.allclose(calibrated.sum(axis=1), 1)
    assert expected_calibration_error(calibrated[:, 1], y == 1) < expected_calibration_error(
        raw[:, 1], y == 1
    )
    assert Calibration.from_json(json.loads(json.dumps(calibration.to_json()))) == calibration


def test_calibration_is_dropped_when_probabilities_are_calibrated_already() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(3000)
    y = (rng.random(3000) < p).astype(np.int64)
    assert fit_calibration([0, 1], np.c_[1 - p, p], y) is None


def test_multiclass_calibration_renormalises_rows() -> None:
    rng = np.random.default_rng(4)
    raw = _random_probabilities(rng, 3000, 3)
    y = np.argmax(raw + rng.normal(scale=0.3, size=raw.shape), axis=1)
    calibration = fit_calibration(["a", "b", "c"], raw, y)
    assert calibration is not None
    assert np.allclose(calibration.apply(raw).sum(axis=1), 1)


# --- the compact result ------------------------------------------------------------------------


def test_the_result_stays_compact_with_many_outcomes_and_long_slice_values() -> None:
    report = PerformanceReport(
        model_version="v1",
        metric="Accuracy",
        verdict="Degraded",
        value=0.812345678,
        offline=0.9,
        counts=Counts(10_000, 8_000, 100, 3, 2, 1),
        metrics={"accuracy": 0.812345678, "f1": 0.8, "roc_auc": None},
        estimated={"accuracy": 0.9, "f1": 0.88, "roc_auc": 0.93},
        estimate_gap=-0.0876543,
        outcomes={f"o{i}_{'x' * 58}": ("Sum", 1234.56789 * i, 8000) for i in range(16)},
        slices=Slices(
            "country",
            [SliceQuality("v" * 500 + str(i), 500, 0.5 + i / 100) for i in range(20)],
            SliceQuality("v" * 500, 500, 0.5),
            0.31,
        ),
        reason="Accuracy 0.812 is past threshold 0.85",
    )
    result = report.to_result()
    text = json.dumps(result, separators=(",", ":"))
    assert len(text.encode()) <= RESULT_BYTES
    assert result["value"] == "0.812346"
    assert result["labelledShare"] == "0.808081"
    assert len(result["slices"]["worst"]) == 5
    assert result["outcomesOmitted"] > 0
    assert "rocAuc" not in result["metrics"]
    assert result["estimated"]["rocAuc"] == "0.93"


def test_the_realised_roc_auc_ranks_the_logged_probabilities_not_the_calibrated_ones() -> None:
    """Calibration serves the estimate; the realised figure is scikit-learn's on what was logged."""
    rng = np.random.default_rng(4)
    positive = rng.uniform(0.05, 0.95, 200)
    probabilities = np.column_stack([1 - positive, positive])
    truth = (rng.uniform(size=200) < positive).astype(np.int64)
    ids = [f"r{i}-0" for i in range(200)]
    window = log_window(
        ids, (positive > 0.5).astype(np.int64).tolist(), [NOW_MS - 1000] * 200,
        probabilities, [0, 1],
    )  # fmt: skip
    flattening = Calibration([0, 1], {1: ([0.0, 0.5, 1.0], [0.2, 0.2, 0.8])})  # ties the low half
    report = evaluate(
        window,
        [labels(ids, truth.tolist(), [NOW_MS] * 200)],
        performance(metric="RocAuc", minLabelledRows=1),
        calibration=flattening,
    )
    assert report.value == pytest.approx(roc_auc_score(truth, positive), abs=1e-12)
    assert report.estimated["roc_auc"] != pytest.approx(report.value, abs=1e-6)


def test_a_label_that_is_no_class_is_refused_naming_it_not_scored_as_a_wrong_answer() -> None:
    """/feedback refuses such labels; a bulk file's are refused at the join, never a new class."""
    ids = [f"r{i}-0" for i in range(4)]
    probabilities = np.full((4, 3), 1 / 3)
    window = log_window(ids, [0, 1, 2, 0], [NOW_MS - 1000] * 4, probabilities, [0, 1, 2])
    with pytest.raises(QualityError, match=r"the first 'setosa' for request 'r2-0'"):
        evaluate(window, [labels(ids, ["0", "1", "setosa", "7"], [None] * 4)], classes=[0, 1, 2])
