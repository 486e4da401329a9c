"""Canary figures from real model-server metrics text (the server's own ServingMetrics)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from scipy.spatial.distance import jensenshannon

from mlkube.core.analysis import (
    Scrape,
    canary_metrics,
    histogram_quantile,
    jensen_shannon_distance,
    parse_counters,
    window,
)
from mlkube.runtime.metrics import ServingMetrics


def server_metrics(
    version: str, latencies_ms: list[float], statuses: list[int], labels: list[str]
) -> str:
    registry = CollectorRegistry()
    metrics = ServingMetrics(version, registry=registry)
    for status, latency in zip(statuses, latencies_ms, strict=True):
        metrics.observe_request(status, latency / 1000)
    metrics.observe_class_labels(np.array(labels))
    metrics.flush()
    return generate_latest(registry).decode()


def test_requests_errors_and_p95_are_summed_over_canary_pods() -> None:
    pod_a = server_metrics("v2", [10.0] * 90, [200] * 85 + [500] * 5, ["a"] * 90)
    pod_b = server_metrics("v2", [40.0] * 10, [200] * 8 + [422] * 2, ["b"] * 10)
    stable = server_metrics("v1", [10.0] * 100, [200] * 100, ["a"] * 90 + ["b"] * 10)
    figures = canary_metrics([pod_a, pod_b], [stable])
    assert figures.requests == 100
    assert figures.errors == 7, "5xx, and 4xx the stable does not answer"
    assert figures.p95_latency_ms is not None
    assert 30 <= figures.p95_latency_ms <= 40
    assert figures.prediction_shift == pytest.approx(0.0, abs=1e-9)


def test_a_4xx_rate_the_stable_shares_is_the_clients_not_the_canarys() -> None:
    canary = server_metrics("v2", [10.0] * 100, [200] * 90 + [400] * 10, ["a"] * 100)
    stable = server_metrics("v1", [10.0] * 100, [200] * 90 + [400] * 10, ["a"] * 100)
    assert canary_metrics([canary], [stable]).errors == 0
    refusing = server_metrics("v2", [10.0] * 100, [422] * 100, [])
    assert canary_metrics([refusing], [stable]).errors == 90


def test_prediction_shift_matches_scipy() -> None:
    left, right = Counter({"a": 70, "b": 20, "c": 10}), Counter({"a": 10, "b": 30, "d": 60})
    keys = sorted(left.keys() | right.keys())
    expected = jensenshannon([left[k] for k in keys], [right[k] for k in keys], base=2)
    assert jensen_shannon_distance(left, right) == pytest.approx(expected, abs=1e-12)
    assert jensen_shannon_distance(Counter(), right) is None


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    cumulative = Counter({0.1: 50.0, 0.2: 90.0, 0.5: 100.0, float("inf"): 100.0})
    assert histogram_quantile(0.5, cumulative) == pytest.approx(0.1)
    assert histogram_quantile(0.95, cumulative) == pytest.approx(0.35)
    assert histogram_quantile(0.95, Counter()) is None


def test_regressor_predictions_compare_by_histogram_bucket() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics("v1", registry=registry)
    metrics.observe_values(np.array([1.5, 1.5, 150.0]))
    metrics.flush()
    scrape = Scrape([generate_latest(registry).decode()])
    distribution = scrape.prediction_distribution()
    assert sum(distribution.values()) == 3
    assert max(distribution.values()) == 2


def test_no_traffic_means_no_figures() -> None:
    figures = canary_metrics([server_metrics("v2", [], [], [])], [])
    assert (figures.requests, figures.p95_latency_ms, figures.prediction_shift) == (0, None, None)


def counters_of(statuses: list[int], labels: list[str]) -> dict[str, float]:
    return parse_counters(server_metrics("v2", [10.0] * len(statuses), statuses, labels))


def test_each_analysis_judges_only_the_requests_since_the_last_one() -> None:
    before = {"canary/a": counters_of([500] * 50, [])}
    now = {"canary/a": counters_of([500] * 50 + [200] * 30, ["x"] * 30)}
    since = window(now, before)
    assert since["requests|5xx"] == 0
    assert since["requests|2xx"] == 30


def test_a_restarted_pod_counts_from_zero_again() -> None:
    before = {"canary/a": counters_of([200] * 80, ["x"] * 80)}
    restarted = {"canary/a": counters_of([500] * 10, [])}
    since = window(restarted, before)
    assert (since["requests|5xx"], since.get("requests|2xx", 0)) == (10, 0)
    new_pod = window({"canary/b": counters_of([200] * 5, ["x"] * 5)}, before)
    assert new_pod["requests|2xx"] == 5
