"""The model server's metrics, batched: what a scrape reads after a flush."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mlkube.layout import FEEDBACK_LABEL_COLUMN, FEEDBACK_REQUEST_ID_COLUMN
from mlkube.runtime.inference_log import SegmentWriter, Values
from mlkube.runtime.live_quality import Counted, LiveQuality
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


def _post_labels(directory: Path, pod: str, ids: list[str], labels: list[object]) -> None:
    """Labels stored as a server stores what ``/feedback`` accepted."""
    with SegmentWriter(str(directory), pod, retention_segments=None) as writer:
        columns: dict[str, Values] = {
            FEEDBACK_REQUEST_ID_COLUMN: ids,
            FEEDBACK_LABEL_COLUMN: np.asarray(labels, dtype=object),
        }
        writer.append_rows(columns)


def test_a_pod_counts_each_label_for_its_own_rows_once(tmp_path: Path) -> None:
    counted: list[Counted] = []
    live = LiveQuality(str(tmp_path), np.array(["cat", "dog"], dtype=object), counted.append)
    live.observe("basket-9", np.array(["cat", "dog", "cat"], dtype=object))
    live.observe("order-1", np.array(["dog"], dtype=object))
    _post_labels(
        tmp_path,
        "another-pod",  # any pod may receive a label; the one that answered counts it
        ["basket-9-0", "basket-9-1", "basket-9-2", "order-1-0", "theirs-0", "basket-9-7", "x"],
        ["cat", "cat", "cat", "dog", "cat", "cat", "dog"],
    )
    assert live.poll() == Counted(labelled=4, correct=3), "rows 0-2 of basket-9 and order-1's"
    _post_labels(tmp_path, "another-pod", ["basket-9-1"], ["dog"])  # a correction
    assert live.poll() == Counted(), "a row counts once, and a segment is read once"


def test_a_regressors_labels_add_up_its_errors(tmp_path: Path) -> None:
    live = LiveQuality(str(tmp_path), None, lambda _: None)
    live.observe("r", np.array([1.0, 2.0, 4.0]))
    with SegmentWriter(str(tmp_path), "p", retention_segments=None) as writer:
        columns: dict[str, Values] = {
            FEEDBACK_REQUEST_ID_COLUMN: ["r-0", "r-2"],
            FEEDBACK_LABEL_COLUMN: [2.0, 1.0],
        }
        writer.append_rows(columns)
    assert live.poll() == Counted(labelled=2, absolute_error=4.0, squared_error=10.0)


def test_only_the_newest_rows_are_kept(tmp_path: Path) -> None:
    live = LiveQuality(str(tmp_path), None, lambda _: None, max_rows=100)
    for request in range(50):
        live.observe(f"r{request}", np.zeros(10))
        live.poll()
    _post_labels(tmp_path, "p", ["r0-0", "r49-9"], [1.0, 1.0])
    assert live.poll().labelled == 1, "r0 answered 490 rows ago"


def test_live_quality_counters_are_exported_per_task() -> None:
    registry = CollectorRegistry()
    ServingMetrics("v1", registry=registry, class_labels=["a"]).observe_labelled(
        Counted(labelled=3, correct=2)
    )
    exposition = generate_latest(registry).decode()
    assert 'mlkube_labelled_predictions_total{model_version="v1"} 3.0' in exposition
    assert 'mlkube_correct_predictions_total{model_version="v1"} 2.0' in exposition
    assert "absolute_error" not in exposition
    registry = CollectorRegistry()
    ServingMetrics("v1", registry=registry).observe_labelled(
        Counted(labelled=2, absolute_error=4.0, squared_error=10.0)
    )
    exposition = generate_latest(registry).decode()
    assert 'mlkube_absolute_error_sum_total{model_version="v1"} 4.0' in exposition
    assert 'mlkube_squared_error_sum_total{model_version="v1"} 10.0' in exposition
