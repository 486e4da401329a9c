"""The operator's /metrics behind the API server's own authentication and authorization, as
kubebuilder's metrics server (filters.WithAuthenticationAndAuthorization) does it: the bearer
token is checked with a TokenReview, its user with a SubjectAccessReview for `get` on the
non-resource URL /metrics (granted by the chart's mlkube-metrics-reader ClusterRole).

The series name tenants' namespaces and objects, so a pod that can reach the port must not be
enough to read them. Decisions are cached briefly: a scrape every few seconds costs the API
server two reviews a minute, and a revoked binding stops working within CACHE_SECONDS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlparse

from prometheus_client import REGISTRY, MetricsHandler

from mlkube.controller.errors import ApiError

METRICS_PATH = "/metrics"
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
READER_ROLE = os.environ.get("MLKUBE_METRICS_READER_ROLE", "mlkube-metrics-reader")
"""The ClusterRole granting it, named after the chart's release (`<release>-metrics-reader`)."""
CACHE_SECONDS = 60.0
"""How long an allowed token stays allowed without asking again."""
REFUSED_CACHE_SECONDS = 10.0
"""How long a refusal stands: short, so a binding just granted works soon."""
CACHE_MAX = 1024
"""Tokens remembered at once: a flood of made-up tokens cannot grow memory."""
logger = logging.getLogger("mlkube.metrics")


class Reviewer(Protocol):
    """The one call needed of `Cluster`."""

    def request(self, method: str, path: str, body: Any = None) -> Any: ...


@dataclass(frozen=True)
class Decision:
    status: int
    """200 serve; 401 no or unknown token; 403 known user without the right; 500 cannot tell."""
    reason: str


class MetricsAuth:
    def __init__(self, kube: Reviewer, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.clock = clock
        self._cache: dict[str, tuple[Decision, float]] = {}
        self._lock = threading.Lock()

    def decide(self, authorization: str | None) -> Decision:
        """The answer to a request carrying this Authorization header."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Decision(401, "a bearer token is required")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            decision = self._review(token)
        except ApiError as e:  # not cached: the next scrape asks again
            logger.warning("cannot review a /metrics token: %s", e)
            return Decision(500, "cannot verify the token now")
        ttl = CACHE_SECONDS if decision.status == 200 else REFUSED_CACHE_SECONDS
        with self._lock:
            if len(self._cache) >= CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
            self._cache[key] = (decision, now + ttl)
        return decision

    def _review(self, token: str) -> Decision:
        review = self.kube.request(
            "POST",
            TOKEN_REVIEWS,
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        status = (review or {}).get("status") or {}
        if not status.get("authenticated"):
            return Decision(401, "the token is not valid")
        user = status.get("user") or {}
        username = str(user.get("username", ""))
        access = self.kube.request(
            "POST",
            ACCESS_REVIEWS,
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": username,
                    "uid": user.get("uid"),
                    "groups": user.get("groups") or [],
                    "extra": user.get("extra") or {},
                    "nonResourceAttributes": {"path": METRICS_PATH, "verb": "get"},
                },
            },
        )
        if ((access or {}).get("status") or {}).get("allowed"):
            return Decision(200, username)
        return Decision(
            403, f"{username} may not get {METRICS_PATH}: bind the ClusterRole {READER_ROLE}"
        )


class _Handler(MetricsHandler):
    auth: MetricsAuth | None = None

    def do_GET(self) -> None:  # noqa: N802 - http.server calls it by this name
        if urlparse(self.path).path != METRICS_PATH:
            self._refuse(Decision(404, f"only {METRICS_PATH} is served"))
            return
        if self.auth is not None:
            decision = self.auth.decide(self.headers.get("Authorization"))
            if decision.status != 200:
                self._refuse(decision)
                return
        super().do_GET()

    def _refuse(self, decision: Decision) -> None:
        body = f"{decision.reason}\n".encode()
        self.send_response(decision.status)
        if decision.status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="mlkube-operator"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_metrics(port: int, auth: MetricsAuth | None) -> ThreadingHTTPServer:
    """/metrics on `port` (0: any free one) in a daemon thread; `auth` None serves anyone."""
    handler = type("MetricsAuthHandler", (_Handler,), {"auth": auth, "registry": REGISTRY})
    server = ThreadingHTTPServer(("", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
