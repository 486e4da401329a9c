"""The model server: a BentoML service that serves one verified model version.

Run it with ``mlkube-runtime serve`` (``serving_cli``): what
``bentoml serve mlkube.runtime.serve:MLKubeModelServer`` does with one worker, in one process.

Environment (the primary interface; the operator sets these on the pod):

- ``MLKUBE_MODEL_URI``: the model version directory (a path, ``file://`` or ``s3://``).
- ``MLKUBE_MODEL_SHA256``: expected sha256 of ``model.joblib``; checked before unpickling, and a
  mismatch stops the server with an error naming the file and both digests. When unset, the
  digest recorded next to the model (``model.sha256``) is used.
- ``MLKUBE_INFERENCE_LOG_URI``: optional, the Deployment's inference log directory. The server
  writes its rows (inputs, predictions, probabilities, request ids) to ``<uri>/<model version>/``
  and the labels posted to ``/feedback`` to ``<uri>/_feedback/`` (``mlkube.layout``).
- ``MLKUBE_INFERENCE_LOG_MAX_BYTES``: the byte budget of this version's log directory; past it
  the oldest segments go (default 0: none; the operator sets the chart's ``inferenceLog.maxBytes``).
- ``MLKUBE_POD_NAME``: writer id of the inference log segments (default: the host name).
- ``MLKUBE_MODEL_VERSION``: the ``model_version`` label of the metrics (default: ``unknown``).
- ``MLKUBE_MODEL_NAME``, ``MLKUBE_MODEL_VERSION_NUMBER``: the model's name and the ModelVersion's
  number, as the Open Inference Protocol and KServe v1 paths name them (default ``model``, and
  no version).
- ``MLKUBE_LIVE_QUALITY_ROWS``: answered rows kept to count live quality from the labels
  (default 500000; 0 turns the counting off; ``live_quality``).
- ``MLKUBE_PREDICTION_BUCKETS``: optional comma-separated bucket bounds of the regressor
  prediction histogram (default: symmetric 1-2-5 steps, see ``metrics``).
- ``MLKUBE_MAX_ROWS``: rows a ``/predict`` request, or labels a ``/feedback`` request, may hold
  (default 100000); more is a 413 naming the cap.
- ``MLKUBE_MAX_CONCURRENCY``: large requests computing at once in the server's thread pool
  (default 4), and ``MLKUBE_MAX_QUEUED``: large requests waiting for one of them (default 8). Past
  both, a large request is a 503 with ``Retry-After``: nothing waits without bound.
- ``MLKUBE_MIN_BODY_BYTES_PER_SECOND``: the slowest a request body may arrive, on average, after
  ``MLKUBE_BODY_GRACE_SECONDS`` (default 65536 bytes/s after 5 s; 0 turns the rule off); a body
  that falls behind is dropped with a 408 and the connection closed.
- Test and chaos knobs, for exercising canary analysis; leave unset in production:
  ``MLKUBE_FAULT_ERROR_PERCENT`` (0-100: that share of prediction requests answers 500) and
  ``MLKUBE_FAULT_DELAY_MS`` (added to every prediction request).

HTTP, one port, several protocols over one predictor (``protocol/``, the layers of KServe's
server: per-protocol decoding in ``protocol/rest/``, one ``DataPlane``, this service):

- ``POST /predict`` and KServe v1's ``POST /v1/models/<name>:predict`` (``GET
  /v1/models/<name>``: ready): rows in ``instances`` (objects, or lists in schema order) or
  columns in ``inputs`` (``protocol.rest.v1_endpoints``). Every schema column must be present,
  with its type (float accepts integers; int accepts integral numbers), and ``null`` only in the
  columns the schema marks ``nullable``. Answer: ``{"predictions": [...], "probabilities":
  [[...], ...], "requestIds": [...], "modelVersion": "..."}``; a malformed body is a 400 and a
  schema violation a 422, ``{"error": "...", "column": "..."}``.
- The Open Inference Protocol (v2) REST API: ``GET /v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2/models/<name>[/versions/<v>][/ready]``, ``POST
  .../infer`` (``protocol.rest.v2_endpoints``).
- Every prediction has a request id (the body's ``id``, else the ``X-Request-ID`` header, else a
  new uuid4), echoed in ``X-Request-ID``; row ``i`` of the request is ``<id>-<i>`` in the
  inference log and for ``/feedback``. A prediction that is not a finite number is refused,
  naming the row.
- ``POST /feedback`` with ``{"feedback": [{"requestId": "<id>-<row>", "label": ...,
  "outcomes": {"name": number}}, ...]}``: ground truth for logged rows, checked against the model
  (a classifier's label must be one of its classes, a regressor's a finite number) and stored
  off the request path; answer ``{"stored": n}``, or a 422 naming the item and its requestId.
- Every prediction protocol and ``/feedback``: a body over 16 MiB, or more rows (labels) than ``MLKUBE_MAX_ROWS``, is a 413; a body
  behind the floor rate a 408; a large request past the pool's places a 503 with
  ``Retry-After``. 408 and 413 count as 4xx in the request metrics, the 503 as a 5xx (a canary
  that sheds load more than the stable is worse; docs/serving.md).
- ``GET /livez``, ``GET /readyz``, ``GET /metrics``: BentoML's own; the metrics are listed in
  ``mlkube.runtime.metrics``.

gRPC, on ``MLKUBE_GRPC_PORT`` when set (the operator sets 8081): the Open Inference Protocol's
``inference.GRPCInferenceService`` over the same data plane (``protocol.grpc_server``).

Large requests: a body over ``protocol.http.INLINE_BODY_BYTES`` is decoded, checked, predicted and written out
in a bounded thread pool, and so is a prediction the model's cost (timed on probe rows at start)
puts over ``protocol.dataplane.INLINE_PREDICT_SECONDS``; everything else runs inline on the event loop, where a thread
hop would cost more than the request. So probes, metrics and small requests are answered while
a large one computes (scikit-learn's trees release the GIL while they walk).

Speed: the prediction paths are answered by a plain ASGI handler that the service class puts in front
of BentoML's application (``MLKubeService.to_asgi``), so the hot path skips BentoML's per-request
middleware, pydantic IO models and thread hop; everything else (lifecycle, probes, metrics,
configuration) is BentoML's. After the model loads, the heap is frozen (``gc.freeze``), which
takes the full-collection pauses (45 ms and more with ~200k live objects) off the request path.
docs/serving.md has the measurements.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import bentoml

from mlkube.runtime import artifacts
from mlkube.runtime.protocol.dataplane import DataPlane, Model
from mlkube.runtime.protocol.grpc_server import GRPCServer
from mlkube.runtime.protocol.http import (
    ASGIApp,
    ASGIReceive,
    ASGIScope,
    ASGISend,
    configure_sklearn,
)
from mlkube.runtime.protocol.rest.v1_endpoints import (
    MODELS_PREFIX,
    PREDICT_PATH,
    KServeV1,
    V1Endpoint,
)
from mlkube.runtime.protocol.rest.v2_endpoints import V2_PREFIX, V2Endpoints
from mlkube.runtime.protocol.settings import ServeSettings

logger = logging.getLogger("mlkube.serve")

FEEDBACK_PATH = "/feedback"
METRICS_PATH = "/metrics"


class MLKubeService(bentoml.Service[Any]):  # type: ignore[misc]
    """BentoML's Service with the prediction protocols and ``/feedback`` answered in front of
    BentoML's middleware stack.

    Mounting the handlers with ``bentoml.asgi_app`` instead still runs every request through
    BentoML's tracing, access-log, metrics, timeout and context middleware, which cost more than
    the prediction itself for a small model (docs/serving.md).
    """

    def to_asgi(self, is_main: bool = True) -> ASGIApp:
        bentoml_app: ASGIApp = super().to_asgi(is_main=is_main)

        server: MLKubeModelServer | None = None  # looked up once: the lookup is not free

        async def app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
            nonlocal server
            if scope["type"] == "http":
                path = scope["path"]
                if path == PREDICT_PATH:
                    server = server or bentoml.get_current_service()
                    await server.plane.infer(scope, receive, send, server.v1)
                    return
                if path.startswith(_OWN_PREFIXES):
                    server = server or bentoml.get_current_service()
                    handler = server.handler(path)
                    if handler is not None:
                        await handler(scope, receive, send)
                        return
            await bentoml_app(scope, receive, send)

        return app


_OWN_PREFIXES = (V2_PREFIX, MODELS_PREFIX, FEEDBACK_PATH, METRICS_PATH)


@bentoml.service(service_class=MLKubeService, workers=1)
class MLKubeModelServer:
    """Loads the model named by the environment, verified, and answers predictions."""

    def __init__(self) -> None:
        settings = ServeSettings.from_env(os.environ)
        model: Model = artifacts.load_verified_model(  # type: ignore[assignment]
            settings.model_uri, settings.model_sha256
        )
        configure_sklearn()  # for the event loop's thread; the pool's threads do it themselves
        self.plane = DataPlane(settings, model, artifacts.load_schema(settings.model_uri))
        predictor = self.plane.predictor
        self.v1 = V1Endpoint(predictor, settings.model_version)
        self.kserve_v1 = KServeV1(self.plane, self.v1, settings.model_name)
        self.v2 = V2Endpoints(self.plane, settings)
        self.grpc = (
            GRPCServer(self.plane, self.v2, settings.grpc_port) if settings.grpc_port else None
        )
        logger.info(
            "serving %s (model %s, version %s, sha256 verified, %s input)",
            settings.model_uri,
            settings.model_name,
            settings.model_version,
            "DataFrame" if predictor.uses_frame else "matrix",
        )
        # Everything allocated so far (~200k objects: BentoML, sklearn, the model) lives as long
        # as the process; frozen, a full collection no longer walks it (45 ms -> ~0 ms here).
        gc.collect()
        gc.freeze()
        self.plane.start()

    def handler(self, path: str) -> ASGIApp | None:
        """What answers `path` (besides ``/predict``); None: BentoML. ``/metrics`` is flushed
        first, then BentoML's."""
        if path.startswith(V2_PREFIX):
            return self.v2
        if path.startswith(MODELS_PREFIX):
            return self.kserve_v1
        if path == FEEDBACK_PATH:
            return self.plane.feedback
        if path == METRICS_PATH:
            self.plane.metrics.flush()
        return None

    @bentoml.on_startup  # type: ignore[untyped-decorator]
    async def start_grpc(self) -> None:
        """The gRPC port, on this event loop; a port that cannot be bound stops the server."""
        if self.grpc is not None:
            await self.grpc.start()

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    async def close_logs(self) -> None:
        """Let gRPC calls in flight finish, then write out what both logs buffered (a SIGTERM
        shuts down through here)."""
        if self.grpc is not None:
            await self.grpc.stop()
        self.plane.close()
