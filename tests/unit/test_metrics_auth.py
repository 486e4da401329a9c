"""Who may read the operator's /metrics (TokenReview, then SubjectAccessReview), how long an
answer is remembered, and that a deleted object's series leave /metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from mlkube.controller import metrics
from mlkube.controller.errors import Temporary
from mlkube.controller.metrics_auth import (
    ACCESS_REVIEWS,
    CACHE_SECONDS,
    REFUSED_CACHE_SECONDS,
    TOKEN_REVIEWS,
    MetricsAuth,
)

USERS = {"prom-token": "system:serviceaccount:monitoring:prometheus", "dev-token": "dev"}
READERS = {"system:serviceaccount:monitoring:prometheus"}


class FakeApiServer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.down = False

    def request(self, method: str, path: str, body: Any = None) -> Any:
        assert method == "POST"
        self.calls.append((path, body))
        if self.down:
            raise Temporary(503, "ServiceUnavailable", "etcd is down")
        if path == TOKEN_REVIEWS:
            user = USERS.get(body["spec"]["token"])
            if user is None:
                return {"status": {"authenticated": False}}
            return {"status": {"authenticated": True, "user": {"username": user, "groups": []}}}
        assert path == ACCESS_REVIEWS
        spec = body["spec"]
        assert spec["nonResourceAttributes"] == {"path": "/metrics", "verb": "get"}
        return {"status": {"allowed": spec["user"] in READERS}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_token_or_an_unknown_one_is_401_a_user_without_the_role_403() -> None:
    auth = MetricsAuth(FakeApiServer())
    assert auth.decide(None).status == 401
    assert auth.decide("Basic dXNlcjpwdw==").status == 401
    assert auth.decide("Bearer ").status == 401
    assert auth.decide("Bearer forged").status == 401
    refused = auth.decide("Bearer dev-token")
    assert refused.status == 403
    assert "mlkube-metrics-reader" in refused.reason
    assert auth.decide("Bearer prom-token").status == 200
    assert auth.decide("bearer prom-token").status == 200


def test_answers_are_remembered_briefly_and_refusals_shorter() -> None:
    server, clock = FakeApiServer(), Clock()
    auth = MetricsAuth(server, clock)
    auth.decide("Bearer prom-token")
    auth.decide("Bearer dev-token")
    asked = len(server.calls)
    clock.now += REFUSED_CACHE_SECONDS - 1
    auth.decide("Bearer prom-token")
    auth.decide("Bearer dev-token")
    assert len(server.calls) == asked, "both still cached"
    clock.now += 2
    auth.decide("Bearer dev-token")
    assert len(server.calls) == asked + 2, "a refusal is asked again soon (a binding just made)"
    auth.decide("Bearer prom-token")
    assert len(server.calls) == asked + 2
    clock.now += CACHE_SECONDS
    auth.decide("Bearer prom-token")
    assert len(server.calls) == asked + 4, "a revoked binding stops working within the TTL"


def test_an_api_server_that_cannot_answer_is_500_and_not_remembered() -> None:
    server = FakeApiServer()
    auth = MetricsAuth(server)
    server.down = True
    assert auth.decide("Bearer prom-token").status == 500
    server.down = False
    assert auth.decide("Bearer prom-token").status == 200


def test_a_deleted_objects_series_leave_and_others_stay() -> None:
    metrics.CANARY_WEIGHT.labels("forget-a", "iris").set(20)
    metrics.CANARY_WEIGHT.labels("forget-b", "iris").set(50)
    metrics.DRIFT_STATISTIC.labels("forget-a", "iris-drift", "petal_width").set(0.3)
    metrics.LIVE_PERFORMANCE.labels(
        "forget-a", "iris-drift", "iris-v2", "accuracy", "realised"
    ).set(0.9)
    metrics.forget("Deployment", "forget-a", "iris")
    metrics.forget("DriftMonitor", "forget-a", "iris-drift")
    metrics.forget("TrainingJob", "forget-a", "iris")  # no series of its own: nothing to do
    text = generate_latest().decode()
    assert 'mlkube_canary_weight{deployment="iris",namespace="forget-b"} 50.0' in text
    assert 'namespace="forget-a"' not in text
