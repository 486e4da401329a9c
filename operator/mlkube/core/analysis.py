"""Canary analysis figures from the model servers' own /metrics (Prometheus text).

The operator reads each pod's /metrics through the API server's pod proxy, so analysis needs no
Prometheus; these pure functions turn the scraped texts into `CanaryMetrics`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from mlkube.core.canary import CanaryMetrics

REQUESTS = "mlkube_requests"
LATENCY = "mlkube_request_duration_seconds"
PREDICTED_LABELS = "mlkube_predictions"
PREDICTED_VALUES = "mlkube_prediction_value"


class Scrape:
    """The series of one or more pods' /metrics that canary analysis needs, summed over pods."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.requests_by_code: Counter[str] = Counter()
        self.latency_buckets: Counter[float] = Counter()
        self.labels: Counter[str] = Counter()
        self.value_buckets: Counter[float] = Counter()
        for text in texts:
            self._add(text)

    def _add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.name == REQUESTS and sample.name == f"{REQUESTS}_total":
                    self.requests_by_code[sample.labels.get("code", "")] += int(sample.value)
                elif family.name == LATENCY and sample.name == f"{LATENCY}_bucket":
                    self.latency_buckets[float(sample.labels["le"])] += int(sample.value)
                elif family.name == PREDICTED_LABELS and sample.name == f"{PREDICTED_LABELS}_total":
                    self.labels[sample.labels.get("label", "")] += int(sample.value)
                elif (
                    family.name == PREDICTED_VALUES and sample.name == f"{PREDICTED_VALUES}_bucket"
                ):
                    self.value_buckets[float(sample.labels["le"])] += int(sample.value)

    @property
    def requests(self) -> int:
        return sum(self.requests_by_code.values())

    @property
    def server_errors(self) -> int:
        return self.requests_by_code.get("5xx", 0)

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


def canary_metrics(canary_texts: Iterable[str], stable_texts: Iterable[str]) -> CanaryMetrics:
    canary, stable = Scrape(canary_texts), Scrape(stable_texts)
    p95 = histogram_quantile(0.95, canary.latency_buckets)
    return CanaryMetrics(
        requests=canary.requests,
        errors=canary.server_errors,
        p95_latency_ms=None if p95 is None else p95 * 1000,
        prediction_shift=jensen_shannon_distance(
            canary.prediction_distribution(), stable.prediction_distribution()
        ),
    )
