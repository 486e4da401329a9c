"""Canary analysis figures from the model servers' own /metrics (Prometheus text).

The operator reads each pod's /metrics through the API server's pod proxy, so analysis needs no
Prometheus; these pure functions turn the scraped texts into `CanaryMetrics`. Live quality comes
from the same scrapes: each server counts the labels for the rows it answered
(``mlkube.runtime.live_quality``), so canary and stable are compared on the labels counted in the
same window.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "mlkube_requests"
LATENCY = "mlkube_request_duration_seconds"
PREDICTED_LABELS = "mlkube_predictions"
PREDICTED_VALUES = "mlkube_prediction_value"
_SERIES = {
    f"{REQUESTS}_total": ("requests", "code"),
    f"{LATENCY}_bucket": ("latency", "le"),
    f"{PREDICTED_LABELS}_total": ("label", "label"),
    f"{PREDICTED_VALUES}_bucket": ("value", "le"),
}
_LIVE_SERIES = {
    "mlkube_labelled_predictions_total": "labelled",
    "mlkube_correct_predictions_total": "correct",
    "mlkube_absolute_error_sum_total": "absolute_error",
    "mlkube_squared_error_sum_total": "squared_error",
}
CLIENT_ERROR_MARGIN = 3.0
"""Standard errors of the difference between canary and stable 4xx rates that sampling alone may
explain: requests land on either version at random, so equal rates rarely come out equal."""

Counters = dict[str, float]
"""One pod's counters that analysis needs, flat: `requests|2xx`, `latency|0.05`, `label|setosa`,
`live|labelled`."""
QualityMetric = Literal["Accuracy", "Mae"]


@dataclass(frozen=True)
class LiveQuality:
    """Live accuracy (classifiers) or mean absolute error (regressors) of canary and stable, over
    the labels their pods counted in the same window; None on a side without labelled rows."""

    metric: QualityMetric
    canary: float | None
    stable: float | None
    canary_labelled: int
    stable_labelled: int

    def drop(self) -> float | None:
        """How much worse the canary is: the stable's accuracy minus the canary's, or the
        canary's MAE minus the stable's; None without both figures."""
        if self.canary is None or self.stable is None:
            return None
        return self.stable - self.canary if self.metric == "Accuracy" else self.canary - self.stable


@dataclass(frozen=True)
class CanaryMetrics:
    """What the canary's pods served in the window analysed."""

    requests: int
    errors: int
    """5xx answers plus `excess_client_errors`."""
    p95_latency_ms: float | None = None
    prediction_shift: float | None = None
    """Jensen-Shannon distance between canary and stable prediction distributions."""
    live_quality: LiveQuality | None = None
    """None when the canary's servers count no live quality (no inference log)."""


def parse_counters(text: str) -> Counters:
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series = _SERIES.get(sample.name)
            live = _LIVE_SERIES.get(sample.name)
            if series is not None:
                key = f"{series[0]}|{sample.labels.get(series[1], '')}"
            elif live is not None:
                key = f"live|{live}"
            else:
                continue
            counters[key] = counters.get(key, 0.0) + sample.value
    return counters


def window(now: Mapping[str, Counters], baseline: Mapping[str, Counters] | None) -> Counters:
    """What each pod counted since `baseline`, summed. A pod whose counters went down restarted:
    everything it counted since is new. A pod not in the baseline is new altogether."""
    total: dict[str, float] = {}
    for pod, current in now.items():
        before = (baseline or {}).get(pod) or {}
        if any(current.get(key, 0.0) < value for key, value in before.items()):
            before = {}
        for key, value in current.items():
            total[key] = total.get(key, 0.0) + value - before.get(key, 0.0)
    return total


class Scrape:
    """The series of one or more pods' /metrics that canary analysis needs, summed over pods."""

    def __init__(self, texts: Iterable[str] = (), counters: Counters | None = None) -> None:
        self.requests_by_code: Counter[str] = Counter()
        self.latency_buckets: Counter[float] = Counter()
        self.labels: Counter[str] = Counter()
        self.value_buckets: Counter[float] = Counter()
        self.live: dict[str, float] = {}
        """Live-quality sums by name (`labelled`, `correct`, `absolute_error`, ...)."""
        for text in texts:
            self._add(parse_counters(text))
        if counters:
            self._add(counters)

    def _add(self, counters: Counters) -> None:
        for key, value in counters.items():
            series, label = key.split("|", 1)
            if series == "requests":
                self.requests_by_code[label] += int(value)
            elif series == "latency":
                self.latency_buckets[float(label)] += int(value)
            elif series == "label":
                self.labels[label] += int(value)
            elif series == "live":
                self.live[label] = self.live.get(label, 0.0) + value
            else:
                self.value_buckets[float(label)] += int(value)

    @property
    def requests(self) -> int:
        return sum(self.requests_by_code.values())

    @property
    def server_errors(self) -> int:
        return self.requests_by_code.get("5xx", 0)

    @property
    def client_errors(self) -> int:
        return self.requests_by_code.get("4xx", 0)

    @property
    def labelled(self) -> int:
        return int(self.live.get("labelled", 0))

    def quality_metric(self) -> QualityMetric | None:
        """Accuracy where the servers count correct predictions, MAE where they sum errors."""
        if "correct" in self.live:
            return "Accuracy"
        return "Mae" if "absolute_error" in self.live else None

    def live_quality(self) -> float | None:
        """Accuracy or MAE over the labelled rows; None without any."""
        if not self.labelled:
            return None
        total = self.live.get("correct" if "correct" in self.live else "absolute_error", 0.0)
        return total / self.labelled

    def prediction_distribution(self) -> Counter[str]:
        """Class labels for classifiers; per-bucket counts of predicted values for regressors."""
        if self.labels:
            return self.labels
        return Counter({str(le): count for le, count in _per_bucket(self.value_buckets).items()})


def _per_bucket(cumulative: Counter[float]) -> dict[float, int]:
    counts, previous = {}, 0
    for le in sorted(cumulative):
        counts[le] = cumulative[le] - previous
        previous = cumulative[le]
    return counts


def histogram_quantile(quantile: float, cumulative: Counter[float]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] == 0:
        return None
    total = cumulative[bounds[-1]]
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0
    for le in bounds:
        if cumulative[le] >= rank:
            if math.isinf(le):
                return lower_bound
            inside = cumulative[le] - lower_count
            fraction = (rank - lower_count) / inside if inside else 1.0
            return lower_bound + (le - lower_bound) * fraction
        lower_bound, lower_count = le, cumulative[le]
    return lower_bound


def jensen_shannon_distance(left: Counter[str], right: Counter[str]) -> float | None:
    """Base-2 Jensen-Shannon distance (0 = same distribution, 1 = disjoint)."""
    left_total, right_total = sum(left.values()), sum(right.values())
    if left_total == 0 or right_total == 0:
        return None
    divergence = 0.0
    for key in left.keys() | right.keys():
        p, q = left[key] / left_total, right[key] / right_total
        m = (p + q) / 2
        divergence += sum(x * math.log2(x / m) for x in (p, q) if x > 0) / 2
    return math.sqrt(max(divergence, 0.0))


def excess_client_errors(canary: Scrape, stable: Scrape) -> int:
    """The canary's 4xx answers beyond what the stable's 4xx rate in the same window explains.

    Bad clients (malformed bodies, a ``GET /predict`` flood from anywhere) hit both versions
    alike, but a canary refusing what the stable accepts (a new required column, say) is the
    canary's fault. With rates p = 4xx / requests on each side, the excess rate is
    ``max(0, p_canary - p_stable - 3 * sqrt(p_canary (1 - p_canary) / n_canary + p_stable
    (1 - p_stable) / n_stable))``: the difference less three standard errors, as requests split
    between the versions at random. Times the canary's requests, rounded down. With no stable
    request in the window the stable's rate counts as 0."""
    if not canary.requests:
        return 0
    p_canary = canary.client_errors / canary.requests
    variance = p_canary * (1 - p_canary) / canary.requests
    p_stable = 0.0
    if stable.requests:
        p_stable = stable.client_errors / stable.requests
        variance += p_stable * (1 - p_stable) / stable.requests
    excess = p_canary - p_stable - CLIENT_ERROR_MARGIN * math.sqrt(variance)
    return max(0, math.floor(excess * canary.requests + 1e-9))


def canary_metrics(canary_texts: Iterable[str], stable_texts: Iterable[str]) -> CanaryMetrics:
    return figures(Scrape(canary_texts), Scrape(stable_texts))


def window_metrics(canary: Counters, stable: Counters) -> CanaryMetrics:
    """The figures for one analysis window (see `window`)."""
    return figures(Scrape(counters=canary), Scrape(counters=stable))


def live_quality(canary: Scrape, stable: Scrape) -> LiveQuality | None:
    metric = canary.quality_metric()
    if metric is None:
        return None
    return LiveQuality(
        metric=metric,
        canary=canary.live_quality(),
        stable=stable.live_quality() if stable.quality_metric() == metric else None,
        canary_labelled=canary.labelled,
        stable_labelled=stable.labelled if stable.quality_metric() == metric else 0,
    )


def figures(canary: Scrape, stable: Scrape) -> CanaryMetrics:
    p95 = histogram_quantile(0.95, canary.latency_buckets)
    return CanaryMetrics(
        requests=canary.requests,
        errors=canary.server_errors + excess_client_errors(canary, stable),
        p95_latency_ms=None if p95 is None else p95 * 1000,
        prediction_shift=jensen_shannon_distance(
            canary.prediction_distribution(), stable.prediction_distribution()
        ),
        live_quality=live_quality(canary, stable),
    )
