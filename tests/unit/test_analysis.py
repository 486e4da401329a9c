"""Canary figures from real model-server metrics text (the server's own ServingMetrics)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from scipy.spatial.distance import jensenshannon

from mlkube.api.deployment import Analysis
from mlkube.core.analysis import (
    Scrape,
    canary_metrics,
    histogram_quantile,
    jensen_shannon_distance,
    parse_counters,
    window,
    window_metrics,
)
from mlkube.core.canary import evaluate_analysis
from mlkube.runtime.live_quality import Counted
from mlkube.runtime.metrics import ServingMetrics

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


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
    pod_b = server_metrics("v2", [40.0] * 10, [422] * 10, ["b"] * 10)
    stable = server_metrics("v1", [10.0] * 100, [200] * 100, ["a"] * 90 + ["b"] * 10)
    figures = canary_metrics([pod_a, pod_b], [stable])
    assert figures.requests == 100
    assert figures.errors == 6, "5xx, and the 4xx rate beyond the stable's 0%: 10% - 3 x 3%"
    assert figures.p95_latency_ms is not None
    assert 30 <= figures.p95_latency_ms <= 40
    assert figures.prediction_shift == pytest.approx(0.0, abs=1e-9)


def test_a_4xx_rate_the_stable_shares_is_the_clients_not_the_canarys() -> None:
    canary = server_metrics("v2", [10.0] * 100, [200] * 90 + [400] * 10, ["a"] * 100)
    stable = server_metrics("v1", [10.0] * 100, [200] * 90 + [400] * 10, ["a"] * 100)
    assert canary_metrics([canary], [stable]).errors == 0
    refusing = server_metrics("v2", [10.0] * 100, [422] * 100, [])
    assert canary_metrics([refusing], [stable]).errors == 81, "100% - 10% - 3 x 3%"


def requests(ok: int, client_errors: int = 0) -> dict[str, float]:
    return {"requests|2xx": ok, "requests|4xx": client_errors, "label|0": ok}


def test_a_flood_of_4xx_over_canary_and_stable_alike_does_not_fail_the_canary() -> None:
    """Another namespace's 200 GET /predict (405s) land on the canary's pod or the stable's two at
    random, among 60 good requests: whatever the split, the canary is not blamed."""
    analysis = Analysis(min_request_count=10)
    draw = random.Random(16)
    for _ in range(2000):
        canary_share = [draw.random() < 1 / 3 for _ in range(260)]
        floods = canary_share[:200].count(True)
        good = canary_share[200:].count(True)
        metrics = window_metrics(requests(good, floods), requests(60 - good, 200 - floods))
        result = evaluate_analysis(analysis, metrics, NOW)
        assert result.result == "Passed", (floods, good, result.message)


def test_a_canary_refusing_what_the_stable_accepts_fails() -> None:
    analysis = Analysis(min_request_count=10)
    metrics = window_metrics(requests(0, 30), requests(60))
    result = evaluate_analysis(analysis, metrics, NOW)
    assert result.result == "Failed"
    assert result.error_rate_percent == "100.00"
    partly = window_metrics(requests(70, 30), requests(195, 5))  # 30% refused against 2.5%
    assert evaluate_analysis(analysis, partly, NOW).result == "Failed"


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


def live_counters(labelled: int, correct: int, requests_ok: int = 100) -> dict[str, float]:
    registry = CollectorRegistry()
    metrics = ServingMetrics("v", registry=registry, class_labels=["a", "b"])
    for _ in range(requests_ok):
        metrics.observe_request(200, 0.01)
    metrics.observe_labelled(Counted(labelled=labelled, correct=correct))
    metrics.flush()
    return parse_counters(generate_latest(registry).decode())


LIVE = Analysis(min_request_count=10, min_labelled_rows=50, max_quality_drop="0.1")


def test_live_accuracy_is_compared_with_the_stables_over_the_same_window() -> None:
    before = {"canary/p": live_counters(40, 39), "stable/q": live_counters(100, 95)}
    now = {"canary/p": live_counters(140, 99, 200), "stable/q": live_counters(300, 285, 200)}
    metrics = window_metrics(
        window({"canary/p": now["canary/p"]}, before), window({"stable/q": now["stable/q"]}, before)
    )
    live = metrics.live_quality
    assert live is not None
    assert (live.metric, live.canary_labelled, live.stable_labelled) == ("Accuracy", 100, 200)
    assert live.canary == pytest.approx(0.6)
    assert live.stable == pytest.approx(0.95)
    result = evaluate_analysis(LIVE, metrics, NOW)
    assert result.result == "Failed"
    assert "live Accuracy 0.6 is 0.35 worse than the stable's 0.95" in result.message
    assert result.live_quality is not None
    assert (result.live_quality.canary, result.live_quality.stable) == ("0.6", "0.95")
    close = window_metrics(live_counters(100, 90), live_counters(200, 190))
    assert evaluate_analysis(LIVE, close, NOW).result == "Passed", "0.9 against 0.95"


def test_too_few_labels_leave_the_live_check_inconclusive_and_unset_it_never_blocks() -> None:
    few = window_metrics(live_counters(20, 0), live_counters(200, 190))
    result = evaluate_analysis(LIVE, few, NOW)
    assert result.result == "Inconclusive"
    assert "20 labelled rows on the canary and 200 on the stable" in result.message
    assert result.live_quality is not None and result.live_quality.canary == "0"
    failing = window_metrics(live_counters(20, 0, requests_ok=0), live_counters(200, 190))
    assert evaluate_analysis(LIVE, failing, NOW).result == "Inconclusive", "too few requests"
    unjudged = Analysis(min_request_count=10)
    assert evaluate_analysis(unjudged, few, NOW).result == "Passed"
    no_labels = window_metrics(live_counters(0, 0), live_counters(0, 0))
    assert evaluate_analysis(unjudged, no_labels, NOW).result == "Passed"


def test_a_regressors_live_quality_is_its_mean_absolute_error() -> None:
    def regressor(labelled: int, absolute_error: float) -> str:
        registry = CollectorRegistry()
        metrics = ServingMetrics("v", registry=registry)
        metrics.observe_labelled(
            Counted(labelled=labelled, absolute_error=absolute_error, squared_error=1.0)
        )
        metrics.flush()
        return generate_latest(registry).decode()

    live = canary_metrics([regressor(50, 150.0), regressor(50, 100.0)], [regressor(100, 120.0)])
    assert live.live_quality is not None
    assert live.live_quality.metric == "Mae"
    assert live.live_quality.canary == pytest.approx(2.5)
    assert live.live_quality.drop() == pytest.approx(1.3), "MAE 2.5 against the stable's 1.2"
