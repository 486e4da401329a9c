"""Prometheus metrics of the model server, read by the operator's canary analysis.

Names (all labelled ``model_version`` so canary and stable can be told apart):

- ``mlkube_requests_total{code="2xx|4xx|5xx",model_version}``: prediction requests by status class.
  A refused body (413 too many rows or bytes, 408 too slow) is a 4xx, the client's doing; a 503
  from a full thread pool is a 5xx, a canary error (docs/serving.md says why).
- ``mlkube_request_duration_seconds{model_version}``: histogram of request latency, with buckets
  from 0.5 ms to 10 s dense enough around 1-100 ms to read a p95 in milliseconds.
- ``mlkube_predictions_total{label,model_version}``: classifiers, predicted rows per class label.
- ``mlkube_prediction_value{model_version}``: regressors, histogram of predicted values.
- ``mlkube_inference_log_errors_total{model_version}``: batches the inference log could not take.
- ``mlkube_feedback_requests_total{code,model_version}``,
  ``mlkube_feedback_request_duration_seconds{model_version}``: the same for ``POST /feedback``, in
  series of their own, so the error rate and latency canary analysis reads stay the predictions'.
- ``mlkube_feedback_labels_total{model_version}``: labels stored from ``/feedback``.
- Live quality, from the labels naming rows this server answered (``live_quality``):
  ``mlkube_labelled_predictions_total{model_version}``; for classifiers
  ``mlkube_correct_predictions_total{model_version}``, for regressors
  ``mlkube_absolute_error_sum_total{model_version}`` and
  ``mlkube_squared_error_sum_total{model_version}``. Accuracy, MAE and RMSE over a window are
  ratios of their increases, which canary analysis compares between canary and stable.

They are registered on prometheus_client's default registry, which BentoML's ``/metrics`` serves
(in its multiprocess mode too), so they appear next to BentoML's own ``bentoml_service_*`` series.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

if TYPE_CHECKING:
    from mlkube.runtime.live_quality import Counted

LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _one_two_five(low_exponent: int, high_exponent: int) -> list[float]:
    return [m * 10.0**e for e in range(low_exponent, high_exponent + 1) for m in (1, 2, 5)]


# Symmetric 1-2-5 steps from 0.01 to 500,000: a regressor's scale is not known in advance, and
# canary and stable only need the same buckets to be compared.
PREDICTION_VALUE_BUCKETS: tuple[float, ...] = tuple(
    [-v for v in reversed(_one_two_five(-2, 5))] + [0.0] + _one_two_five(-2, 5)
)


def status_class(status: int) -> str:
    """'2xx', '4xx', '5xx': the label the canary analysis sums error rates over."""
    return f"{status // 100}xx"


class _RequestSeries:
    """Requests by status class and their latency: gathered per request, moved into Prometheus
    by `flush` in batches."""

    def __init__(
        self, prefix: str, what: str, model_version: str, registry: CollectorRegistry
    ) -> None:
        self._model_version = model_version
        self._requests = Counter(
            f"{prefix}requests",
            f"{what} requests by status code class.",
            ["code", "model_version"],
            registry=registry,
        )
        latency = Histogram(
            f"{prefix}request_duration_seconds",
            f"{what} request latency.",
            ["model_version"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self._latency = latency.labels(model_version)
        for code in ("2xx", "4xx", "5xx"):  # every series from the start, zero until it counts
            self._requests.labels(code, model_version)
        self._statuses: list[int] = []
        self._seconds: list[float] = []

    def observe(self, status: int, seconds: float) -> None:
        self._statuses.append(status)
        self._seconds.append(seconds)

    def flush(self) -> None:
        statuses, self._statuses = self._statuses, []
        seconds, self._seconds = self._seconds, []
        by_class: collections.Counter[str] = collections.Counter()
        for status, count in collections.Counter(statuses).items():  # few distinct: map those
            by_class[status_class(status)] += count
        for code, count in by_class.items():
            self._requests.labels(code, self._model_version).inc(count)
        if seconds:
            _observe_many(self._latency, np.asarray(seconds))


class ServingMetrics:
    """The server's metrics for one model version; one instance per process.

    Requests only append to plain lists; `flush` moves what they gathered into Prometheus, in
    batches (one update per bucket, not per value). The server flushes before every ``/metrics``
    answer and about once a second, so scrapes see every request while no request pays for a
    Prometheus update (in multiprocess mode each one is a locked write to a memory-mapped file).
    Call the methods from one thread: the server's event loop.
    """

    def __init__(
        self,
        model_version: str,
        registry: CollectorRegistry = REGISTRY,
        prediction_buckets: Sequence[float] = PREDICTION_VALUE_BUCKETS,
        class_labels: Sequence[object] = (),
    ) -> None:
        """`class_labels`: a classifier's ``classes_``, which `observe_classes` counts by
        position; without them the model is a regressor (its live quality is an error)."""
        self.model_version = model_version
        self._class_labels = [str(label) for label in class_labels]
        self._predict_requests = _RequestSeries("mlkube_", "Prediction", model_version, registry)
        self._feedback_requests = _RequestSeries(
            "mlkube_feedback_", "Feedback", model_version, registry
        )
        self._feedback_labels = Counter(
            "mlkube_feedback_labels",
            "Labels stored from /feedback.",
            ["model_version"],
            registry=registry,
        ).labels(model_version)
        self._predictions = Counter(
            "mlkube_predictions",
            "Predicted rows per class label (classifiers).",
            ["label", "model_version"],
            registry=registry,
        )
        self._prediction_value = Histogram(
            "mlkube_prediction_value",
            "Predicted values (regressors).",
            ["model_version"],
            buckets=prediction_buckets,
            registry=registry,
        )
        self._log_errors = Counter(
            "mlkube_inference_log_errors",
            "Request batches the inference log could not take.",
            ["model_version"],
            registry=registry,
        )
        self._labelled = self._live_counter(
            "labelled_predictions", "Answered rows a label was counted for.", registry
        )
        if class_labels:
            self._correct = self._live_counter(
                "correct_predictions", "Labelled rows answered right (classifiers).", registry
            )
        else:
            self._absolute_error = self._live_counter(
                "absolute_error_sum", "Sum of |label - prediction| (regressors).", registry
            )
            self._squared_error = self._live_counter(
                "squared_error_sum", "Sum of (label - prediction)^2 (regressors).", registry
            )
        self._value_child = self._prediction_value.labels(model_version)
        self._log_errors_child = self._log_errors.labels(model_version)
        self._feedback_labels_stored = 0
        self._labels: list[npt.NDArray[np.generic]] = []
        self._positions: list[npt.NDArray[np.intp]] = []
        self._values: list[npt.NDArray[np.generic]] = []

    def observe_request(self, status: int, seconds: float) -> None:
        """A ``/predict`` request."""
        self._predict_requests.observe(status, seconds)

    def observe_feedback(self, status: int, seconds: float, labels: int) -> None:
        """A ``/feedback`` request that stored `labels` labels."""
        self._feedback_requests.observe(status, seconds)
        self._feedback_labels_stored += labels

    def observe_class_labels(self, predictions: npt.NDArray[np.generic]) -> None:
        self._labels.append(predictions)

    def observe_classes(self, positions: npt.NDArray[np.intp]) -> None:
        """Predicted labels as positions in `class_labels`: counted by one ``np.bincount``
        whatever the labels' type, where sorting a second's worth of string labels (300k at
        100 rows a request) held the event loop ~100 ms."""
        self._positions.append(positions)

    def observe_values(self, predictions: npt.NDArray[np.generic]) -> None:
        self._values.append(predictions)

    def flush(self) -> None:
        """Everything observed since the last flush, into the Prometheus metrics."""
        self._predict_requests.flush()
        self._feedback_requests.flush()
        if self._feedback_labels_stored:
            self._feedback_labels.inc(self._feedback_labels_stored)
            self._feedback_labels_stored = 0
        labels, self._labels = self._labels, []
        positions, self._positions = self._positions, []
        values, self._values = self._values, []
        for label, count in _label_counts(labels).items():
            self._predictions.labels(str(label), self.model_version).inc(count)
        if positions:
            counts = np.bincount(np.concatenate(positions), minlength=len(self._class_labels))
            for label, count in zip(self._class_labels, counts.tolist(), strict=True):
                if count:
                    self._predictions.labels(label, self.model_version).inc(count)
        if values:
            _observe_many(self._value_child, np.concatenate([np.ravel(v) for v in values]))

    def inference_log_failed(self, requests: int = 1) -> None:
        self._log_errors_child.inc(requests)

    def observe_labelled(self, counted: Counted) -> None:
        """Labels counted by the live-quality thread; straight into Prometheus (a few updates
        a poll, and its counters lock themselves), from any thread."""
        self._labelled.inc(counted.labelled)
        if self._class_labels:
            self._correct.inc(counted.correct)
        else:
            self._absolute_error.inc(counted.absolute_error)
            self._squared_error.inc(counted.squared_error)

    def _live_counter(self, name: str, what: str, registry: CollectorRegistry) -> Counter:
        return Counter(f"mlkube_{name}", what, ["model_version"], registry=registry).labels(
            self.model_version
        )


def _label_counts(batches: list[npt.NDArray[np.generic]]) -> dict[object, int]:
    """Rows per label over all batches: one `np.unique` (a second's worth of 100-row requests
    counted in Python took ~15 ms on the event loop)."""
    if not batches:
        return {}
    joined = np.concatenate(batches)
    try:
        labels, counts = np.unique(joined, return_counts=True)
    except TypeError:  # labels of types that do not sort together
        return dict(collections.Counter(joined.tolist()))
    return dict(zip(labels.tolist(), counts.tolist(), strict=True))


def _observe_many(child: Histogram, values: npt.NDArray[np.generic]) -> None:
    """Histogram.observe for a whole batch: one update per bucket instead of per value.

    Uses the histogram child's ``_upper_bounds``/``_buckets``/``_sum`` (stable across
    prometheus_client releases); per-value ``observe`` costs ~3 us each in multiprocess mode.
    """
    numbers = np.asarray(values, dtype=np.float64)
    numbers = numbers[~np.isnan(numbers)]  # observe() puts NaN in no bucket
    # observe() counts a value in the first bucket whose upper bound is >= it
    positions = np.searchsorted(np.asarray(child._upper_bounds), numbers, side="left")
    for bucket, count in zip(*np.unique(positions, return_counts=True), strict=True):
        child._buckets[int(bucket)].inc(int(count))
    child._sum.inc(float(numbers.sum()))
