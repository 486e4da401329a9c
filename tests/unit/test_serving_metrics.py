"""The model server's metrics, batched: what a scrape reads after a flush."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mlkube.runtime.metrics import ServingMetrics

pytestmark = pytest.mark.unit


def _series(registry: CollectorRegistry, name: str) -> dict[str, float]:
    """`name`'s samples by their non-version label value."""
    samples = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                key = next(v for k, v in sample.labels.items() if k != "model_version")
                samples[key] = sample.value
    return samples


def test_class_positions_count_as_the_labels_they_point_at() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics("v1", registry=registry, class_labels=["cat", "dog", "fox"])
    metrics.observe_classes(np.array([0, 1, 1]))
    metrics.observe_classes(np.array([1]))
    metrics.observe_class_labels(np.array(["cat"], dtype=object))  # labels outside positions
    metrics.flush()
    assert _series(registry, "mlkube_predictions_total") == {"cat": 2.0, "dog": 3.0}
    assert 'label="fox"' not in generate_latest(registry).decode()  # never predicted


def test_requests_are_counted_by_status_class() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics("v1", registry=registry)
    for status in (200, 201, 404, 422, 500, 200):
        metrics.observe_request(status, 0.001)
    metrics.flush()
    assert _series(registry, "mlkube_requests_total") == {"2xx": 3.0, "4xx": 2.0, "5xx": 1.0}


def test_feedback_requests_are_counted_apart_from_predictions() -> None:
    """Canary analysis reads mlkube_requests_total as the predictions' error rate."""
    registry = CollectorRegistry()
    metrics = ServingMetrics("v1", registry=registry)
    metrics.observe_request(200, 0.001)
    metrics.observe_feedback(200, 0.002, labels=3)
    metrics.observe_feedback(422, 0.001, labels=0)
    metrics.flush()
    assert _series(registry, "mlkube_requests_total") == {"2xx": 1.0, "4xx": 0.0, "5xx": 0.0}
    assert _series(registry, "mlkube_feedback_requests_total") == {
        "2xx": 1.0,
        "4xx": 1.0,
        "5xx": 0.0,
    }
    exposition = generate_latest(registry).decode()
    assert 'mlkube_feedback_labels_total{model_version="v1"} 3.0' in exposition
    assert 'mlkube_request_duration_seconds_count{model_version="v1"} 1.0' in exposition
    assert 'mlkube_feedback_request_duration_seconds_count{model_version="v1"} 2.0' in exposition
