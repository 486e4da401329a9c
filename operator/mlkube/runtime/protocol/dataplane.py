"""The data plane every protocol shares: one predictor, and one path from a request body to its
answer, with the same row cap, thread pool, request ids, metrics, inference log and live quality
whichever protocol decoded the body (KServe's ``protocol/dataplane.py`` has this place).

A protocol (`Endpoint`) only decodes its body into `Inputs` and words the answer and its errors:
``rest/v1_endpoints.py`` (mlkube's ``/predict`` and KServe v1), ``rest/v2_endpoints.py`` (the
Open Inference Protocol).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd

from mlkube.layout import (
    FEEDBACK_REQUEST_ID_COLUMN,
    LOG_CLASSES_METADATA,
    LOG_MODEL_VERSION_COLUMN,
    feedback_uri,
    version_log_uri,
)
from mlkube.runtime import artifacts
from mlkube.runtime.inference_log import Batch, Logged, SegmentWriter
from mlkube.runtime.live_quality import LiveQuality
from mlkube.runtime.metrics import ServingMetrics
from mlkube.runtime.protocol.columns import DTYPES, PROBE_VALUES, check_types
from mlkube.runtime.protocol.errors import RequestError, cut
from mlkube.runtime.protocol.feedback import FeedbackReader
from mlkube.runtime.protocol.http import (
    INLINE_BODY_BYTES,
    ASGIReceive,
    ASGIScope,
    ASGISend,
    BodyReader,
    Headers,
    ThreadPool,
    encode,
    failure,
    send_json,
)
from mlkube.runtime.protocol.request_ids import request_id_of
from mlkube.runtime.protocol.settings import (
    DEFAULT_MAX_ROWS,
    ENV_FAULT_ERROR_PERCENT,
    ENV_INFERENCE_LOG_URI,
    ENV_MAX_ROWS,
    ServeConfigError,
    ServeSettings,
)

logger = logging.getLogger("mlkube.serve")

METRICS_FLUSH_SECONDS = 1.0
INLINE_PREDICT_SECONDS = 0.002
"""A prediction the model's measured cost puts under this runs on the event loop: a thread hop
costs tens of µs, as much as a whole small request's share of a core."""
CALIBRATION_ROWS = 256
LOG_BATCH_REQUESTS = 64
LOG_BATCH_ROWS = 8192
LOG_BATCH_SECONDS = 1.0
"""Answered requests are handed to the inference log in batches of this many requests or rows,
or after this long: one copy per column for all of them, ~1 µs a request where a copy each
cost ~10."""

# Classifiers whose predict is not the argmax of predict_proba.
_PREDICT_IS_NOT_ARGMAX_PROBA = frozenset({"SVC", "NuSVC", "SGDClassifier"})
"""SVC's Platt-scaled probabilities can disagree with its decision; SGDClassifier's
``modified_huber`` probabilities are clipped, so classes tie where the decision does not."""


def _final_estimator(model: object) -> object:
    steps = getattr(model, "steps", None)  # a Pipeline
    return steps[-1][1] if steps else model


_all_true = np.logical_and.reduce
"""``ndarray.all`` without its Python wrapper: this runs on every answer."""


def _check_finite(values: npt.NDArray[Any], what: str, first_row: int = 0) -> None:
    """JSON (RFC 8259) has no Infinity or NaN: such an answer is refused, naming its row (counted
    from `first_row`)."""
    if values.dtype.kind != "f" or _all_true(np.isfinite(values), axis=None):
        return
    finite = np.isfinite(values)
    bad = finite if finite.ndim == 1 else finite.all(axis=1)
    row = int(np.argmin(bad))
    raise RequestError(
        422,
        f"the model's answer for row {first_row + row} is not finite ({what} "
        f"{cut(repr(np.ravel(values[row]).tolist()))}): the input is outside what the model "
        "can answer",
    )


class Model(Protocol):
    def predict(self, features: Any) -> npt.NDArray[Any]: ...


class Inputs(NamedTuple):  # a NamedTuple: made per request, 4x cheaper than a frozen dataclass
    arrays: Batch
    """What the inference log takes: an array per column, or the float matrix under the tuple
    of its columns' names (one copy into the log instead of one per column)."""
    features: npt.NDArray[Any] | pd.DataFrame
    """What the model takes."""
    id: Any
    """The body's ``id`` as sent (unchecked: see `request_id_of`), None without one."""
    rows: int
    outputs: Any = None
    """What the protocol answers (the Open Inference Protocol's requested outputs)."""


class Prediction(NamedTuple):
    values: npt.NDArray[Any]
    probabilities: npt.NDArray[np.float64] | None
    class_positions: npt.NDArray[np.intp] | None = None
    """Each row's label as a position in the model's ``classes_``, where the label is the most
    probable class."""


class Predictor:
    """A loaded model plus the input layout it was found to accept."""

    def __init__(
        self, model: Model, schema: artifacts.ModelSchema, max_rows: int = DEFAULT_MAX_ROWS
    ) -> None:
        self.model = model
        self.max_rows = max_rows
        self.inline_rows = 0
        """The most rows `warm_up` found the model to predict in `INLINE_PREDICT_SECONDS`."""
        self.column_types = schema.column_types()
        self.schema_order = list(self.column_types)
        """The columns as the input schema lists them: the order of rows sent as lists."""
        fitted_names = getattr(model, "feature_names_in_", None)
        self.feature_order: list[str] = (
            [str(n) for n in fitted_names] if fitted_names is not None else self.schema_order
        )
        if set(self.feature_order) != set(self.column_types):
            raise ServeConfigError(
                f"the model was fitted on columns {self.feature_order}, "
                f"but its schema lists {self.schema_order}"
            )
        self.schema_to_features: list[int] | None = (
            None
            if self.feature_order == self.schema_order
            else [self.schema_order.index(name) for name in self.feature_order]
        )
        """Where each fitted column is in schema order; None when the orders agree."""
        self.nullable = frozenset(c.name for c in schema.columns if c.nullable)
        # a missing value is NaN in a float array, None in an object one
        self.dtypes: dict[str, type[np.generic]] = {
            name: (np.float64 if kind in ("float", "int") else np.object_)
            if name in self.nullable
            else DTYPES[kind]
            for name, kind in self.column_types.items()
        }
        self.is_classifier = schema.task == "classification"
        # SVC (probability=False) and others answer labels only
        self.has_probabilities = self.is_classifier and hasattr(model, "predict_proba")
        self.classes = np.asarray(getattr(model, "classes_", []))
        # One model call instead of two: the label is the most probable class, except where
        # probabilities are calibrated apart from the decision (SVC's Platt scaling).
        self.labels_from_probabilities = (
            self.has_probabilities
            and len(self.classes) > 0
            and type(_final_estimator(model)).__name__ not in _PREDICT_IS_NOT_ARGMAX_PROBA
        )
        self.uses_frame = not self._numeric_matrix_works()
        # all-float schemas (most numeric models) go from JSON to the model's matrix in one step
        self.float_matrix = not self.nullable and set(self.column_types.values()) == {"float"}
        self.row_values = itemgetter(*self.feature_order)
        """A row object's values in the fitted order."""
        self._matrix_columns = tuple(self.feature_order)

    def _numeric_matrix_works(self) -> bool:
        """Numeric inputs go in as a float matrix (fast) when the model accepts one.

        A model fitted on a DataFrame warns about the missing column names; the server has
        already checked the names and put the values in the fitted order, so that warning
        is silenced. A pipeline that selects columns by name needs a DataFrame and fails here.
        """
        if any(t == "string" for t in self.column_types.values()):
            return False
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        try:
            self.model.predict(self._matrix(self._probe()))
        except Exception:
            return False
        return True

    def check_rows(self, rows: int) -> None:
        """More rows than `max_rows` is a 413, before any of them is looked at."""
        if rows > self.max_rows:
            raise RequestError(
                413,
                f"the request has {rows} rows; this server takes at most {self.max_rows} a "
                f"request ({ENV_MAX_ROWS}): split it",
            )

    def arrays(self, columns: Mapping[str, list[Any]]) -> dict[str, npt.NDArray[Any]]:
        """One array per column in the schema's type: what the model and the log take."""
        arrays: dict[str, npt.NDArray[Any]] = {}
        for name, dtype in self.dtypes.items():
            try:
                arrays[name] = np.asarray(columns[name], dtype=dtype)
            except (OverflowError, ValueError) as e:
                raise RequestError(422, f"column {name!r}: {e}", name) from None
        return arrays

    def _matrix(self, arrays: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
        return np.array([arrays[name] for name in self.feature_order], dtype=np.float64).T

    def _frame(self, arrays: Mapping[str, npt.NDArray[Any]]) -> pd.DataFrame:
        return pd.DataFrame({name: arrays[name] for name in self.feature_order})

    def features(self, arrays: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[Any] | pd.DataFrame:
        return self._frame(arrays) if self.uses_frame else self._matrix(arrays)

    def from_columns(
        self,
        columns: Mapping[str, list[Any]],
        body_id: Any,
        rows: int,
        outputs: Any = None,
        labels: Mapping[str, str] | None = None,
    ) -> Inputs:
        """Inputs from one list of values per schema column, each checked against its type
        (a 422 naming the column, worded by `labels` where given)."""
        nullable = self.nullable
        for name, kind in self.column_types.items():
            check_types(
                name, kind, columns[name], name in nullable, labels.get(name) if labels else None
            )
        arrays = self.arrays(columns)
        return Inputs(arrays, self.features(arrays), body_id, rows, outputs)

    def from_matrix(
        self, matrix: npt.NDArray[np.float64], body_id: Any, rows: int, outputs: Any = None
    ) -> Inputs:
        """Inputs from a float matrix already in the fitted column order (an all-float schema's
        request, checked to hold numbers only)."""
        features = pd.DataFrame(matrix, columns=self.feature_order) if self.uses_frame else matrix
        return Inputs({self._matrix_columns: matrix}, features, body_id, rows, outputs)

    def in_feature_order(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """A (rows, columns) matrix in schema order, in the fitted order."""
        order = self.schema_to_features
        return matrix if order is None else matrix[:, order]

    def predict(self, features: npt.NDArray[Any] | pd.DataFrame, first_row: int = 0) -> Prediction:
        """The model's answer; a row it answers with a non-finite number is a 422 naming it
        (counted from `first_row`: a batch of a larger file)."""
        if not self.has_probabilities:
            values = np.asarray(self.model.predict(features))
            if not self.is_classifier:
                _check_finite(values, "prediction", first_row)
            return Prediction(values, None)
        probabilities = np.asarray(self.model.predict_proba(features))  # type: ignore[attr-defined]
        _check_finite(probabilities, "probabilities", first_row)
        if not self.labels_from_probabilities:
            return Prediction(np.asarray(self.model.predict(features)), probabilities)
        positions = probabilities.argmax(axis=1)
        return Prediction(self.classes[positions], probabilities, positions)

    def _probe(self, rows: int = 1) -> dict[str, npt.NDArray[Any]]:
        return self.arrays(
            {name: [PROBE_VALUES[t]] * rows for name, t in self.column_types.items()}
        )

    def warm_up(self) -> None:
        """Predictions before traffic, so the first request pays no lazy initialisation; timed,
        they set `inline_rows`. Without them (a probe of zeros may be outside what a pipeline
        accepts) every prediction runs in the thread pool."""
        try:
            one = self.features(self._probe())
            many = self.features(self._probe(CALIBRATION_ROWS))
            self.predict(one)
            fixed = _best_seconds(lambda: self.predict(one))
            per_row = max(0.0, _best_seconds(lambda: self.predict(many)) - fixed) / (
                CALIBRATION_ROWS - 1
            )
        except Exception as e:
            logger.info("warm-up prediction skipped, every prediction runs off the loop: %s", e)
            return
        spare = INLINE_PREDICT_SECONDS - fixed
        self.inline_rows = (
            0 if spare < 0 else self.max_rows if per_row == 0 else int(1 + spare / per_row)
        )
        logger.info(
            "the model predicts 1 row in %.2f ms and each further one in %.2f µs: requests of "
            "up to %d rows are predicted on the event loop, larger ones in the thread pool",
            fixed * 1e3,
            per_row * 1e6,
            self.inline_rows,
        )


def _best_seconds(call: Callable[[], object], times: int = 3) -> float:
    timings = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return min(timings)


class Endpoint(Protocol):
    """One protocol's prediction request: its body decoded, its answer and errors worded."""

    def wording(self, error: RequestError) -> tuple[int, dict[str, Any]]:
        """The protocol's status and body for a refused request."""
        ...

    def read(self, body: bytes) -> Inputs:
        """The body as the model's inputs, validated; RequestError naming what is wrong."""
        ...

    def answer(self, prediction: Prediction, request_id: str, inputs: Inputs) -> Any:
        """The answer: its JSON document, or the bytes the protocol sends."""
        ...


def read(endpoint: Endpoint, body: bytes) -> Inputs:
    """`endpoint.read`, where any failure is the request's 400: a body the decoder did not
    foresee must not be a 5xx (canary analysis counts those against the model), nor put a
    traceback in the answer (it goes to the log)."""
    try:
        return endpoint.read(body)
    except RequestError:
        raise
    except Exception as e:
        logger.exception("decoding a request failed")
        raise RequestError(
            400, f"the request could not be decoded ({type(e).__name__}); see the server log"
        ) from None


class Answer(NamedTuple):
    """A prediction request's answer, as `DataPlane.answer` gives it to a protocol to send."""

    status: int
    """HTTP's status: what the request metrics count (gRPC words it as its own code)."""
    document: Any
    """What the endpoint answered (a JSON document or bytes), or ``{"error": ...}``."""
    request_id: str | None
    headers: Headers
    """Headers the answer needs besides the protocol's (``Retry-After``, ``Connection``)."""
    arrays: Batch | None
    prediction: Prediction | None


class DataPlane:
    """The server's one predictor and what every prediction goes through, for any protocol."""

    def __init__(self, settings: ServeSettings, model: Model, schema: artifacts.ModelSchema):
        self.settings = settings
        self.predictor = Predictor(model, schema, settings.max_rows)
        self.predictor.warm_up()
        self.pool = ThreadPool(settings.max_concurrency, settings.max_queued)
        self.bodies = BodyReader(settings.min_body_rate, settings.body_grace_seconds)
        predictor = self.predictor
        self.metrics = ServingMetrics(
            settings.model_version,
            prediction_buckets=settings.prediction_buckets,
            class_labels=predictor.classes.tolist(),
        )
        self._metrics_flushed = time.perf_counter()
        self.inference_log: SegmentWriter | None = None
        self.feedback_log: SegmentWriter | None = None
        self.live_quality: LiveQuality | None = None
        classes = predictor.classes if predictor.is_classifier else None
        if settings.inference_log_uri:
            self.inference_log = SegmentWriter(
                version_log_uri(settings.inference_log_uri, settings.model_version),
                settings.pod_name,
                constants={LOG_MODEL_VERSION_COLUMN: settings.model_version},
                retention_bytes=settings.inference_log_max_bytes,
                metadata=(
                    {LOG_CLASSES_METADATA: orjson.dumps(predictor.classes.tolist())}
                    if predictor.has_probabilities
                    else None
                ),
            )
            # Labels are few and worth more than drift samples: no retention, the store's
            # lifecycle rules decide when they go.
            self.feedback_log = SegmentWriter(
                feedback_uri(settings.inference_log_uri),
                settings.pod_name,
                retention_segments=None,
            )
            if settings.live_quality_rows:
                self.live_quality = LiveQuality(
                    feedback_uri(settings.inference_log_uri),
                    classes,
                    self.metrics.observe_labelled,
                    max_rows=settings.live_quality_rows,
                )
        self.feedback_reader = FeedbackReader(classes, settings.max_rows)
        self.ready = False
        """Whether the readiness endpoints say so: from `start` until `close`."""
        self._logged: list[Logged] = []
        self._logged_rows = 0

    def start(self) -> None:
        self.ready = True
        if self.live_quality is not None:
            self.live_quality.start()

    def close(self) -> None:
        """Write out what both logs buffered (a SIGTERM shuts down through here)."""
        started, self.ready = self.ready, False
        self._flush_log()
        self.pool.shutdown()
        if self.live_quality is not None and started:
            self.live_quality.stop()
        for writer in (self.inference_log, self.feedback_log):
            if writer is not None:
                try:
                    writer.close()
                except Exception:
                    logger.exception("writing out %s at shutdown failed", writer.uri)

    async def infer(
        self,
        scope: ASGIScope,
        receive: ASGIReceive,
        send: ASGISend,
        endpoint: Endpoint,
        refusal: RequestError | None = None,
    ) -> None:
        """A prediction request of `endpoint`'s protocol over HTTP: read the body, answer it
        (`answer`), send the JSON; count and log after sending. `refusal`: what the path already
        refused (an unknown model)."""
        started = time.perf_counter()

        async def body() -> bytes:
            if scope["method"] != "POST":
                raise RequestError(405, "use POST")
            if refusal is not None:
                raise refusal
            return await self.bodies.read(receive, started)

        answer = await self.answer(endpoint, body, scope["headers"], started)
        await send_json(send, answer.status, answer.document, answer.request_id, answer.headers)
        self.answered(answer, started)

    async def answer(
        self,
        endpoint: Endpoint,
        body: Callable[[], Awaitable[bytes]],
        headers: Headers,
        started: float,
    ) -> Answer:
        """A prediction request of any protocol, whatever carries it: validate, predict, word
        the answer. `body` gives the request body (raising RequestError to refuse it first),
        `headers` the request's (an ``X-Request-ID``); `started`: ``time.perf_counter()`` when
        the request came. Every failure is an Answer too. The caller sends it, then calls
        `answered`.

        A large body is read into the model's input in the thread pool, and a costly prediction
        (by the model's timing at start) is predicted and worded there; the rest runs inline."""
        settings = self.settings
        if settings.fault_delay_ms:
            await asyncio.sleep(settings.fault_delay_ms / 1000)
        arrays: Batch | None = None
        prediction: Prediction | None = None
        request_id: str | None = None
        extra: Headers = ()
        document: Any
        admitted: float | None = None
        try:
            content = await body()
            if (
                settings.fault_error_percent
                and random.random() * 100 < settings.fault_error_percent
            ):
                status, document = 500, {"error": f"injected fault ({ENV_FAULT_ERROR_PERCENT})"}
            elif len(content) <= INLINE_BODY_BYTES:
                inputs = read(endpoint, content)
                request_id = request_id_of(inputs.id, headers)
                arrays = inputs.arrays
                if inputs.rows <= self.predictor.inline_rows:
                    prediction = self.predictor.predict(inputs.features)
                    status, document = 200, endpoint.answer(prediction, request_id, inputs)
                else:
                    admitted = self.pool.admit()
                    prediction, document = await self.pool.run(
                        self._predict, endpoint, inputs, request_id
                    )
                    status = 200
            else:
                admitted = self.pool.admit()
                inputs = await self.pool.run(read, endpoint, content)
                del content  # its megabytes need not live through the prediction
                request_id = request_id_of(inputs.id, headers)
                arrays = inputs.arrays
                prediction, document = await self.pool.run(
                    self._predict, endpoint, inputs, request_id
                )
                status = 200
        except Exception as e:  # every failure is an answer (failure)
            status, document, extra = failure(e, "prediction", endpoint.wording)
        finally:
            if admitted is not None:
                self.pool.leave(admitted)
        return Answer(status, document, request_id, extra, arrays, prediction)

    def answered(self, answer: Answer, started: float) -> None:
        """After an answer went out: count it, and log its prediction."""
        finished = time.perf_counter()
        self.metrics.observe_request(answer.status, finished - started)
        if answer.prediction is not None and answer.arrays is not None:
            self._record(answer.arrays, answer.prediction, answer.request_id)
        if finished - self._metrics_flushed > METRICS_FLUSH_SECONDS:
            self._metrics_flushed = finished
            self.metrics.flush()

    def _predict(
        self, endpoint: Endpoint, inputs: Inputs, request_id: str
    ) -> tuple[Prediction, bytes]:
        """The prediction and its answer encoded (JSON, unless the protocol encoded it): the
        thread pool's part of a large request."""
        prediction = self.predictor.predict(inputs.features)
        document = endpoint.answer(prediction, request_id, inputs)
        return prediction, document if type(document) is bytes else encode(document)

    async def feedback(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        """``POST /feedback``: check the labels, queue them for the feedback log, answer."""
        started = time.perf_counter()
        stored = 0
        document: dict[str, Any]
        headers: Headers = ()
        admitted: float | None = None
        try:
            if scope["method"] != "POST":
                raise RequestError(405, "use POST")
            if self.feedback_log is None:
                raise RequestError(
                    404, f"no feedback is kept here: {ENV_INFERENCE_LOG_URI} is unset"
                )
            body = await self.bodies.read(receive, started)
            if len(body) <= INLINE_BODY_BYTES:
                columns = self.feedback_reader.read(body)
            else:  # checking labels is a loop in Python: ~3 µs each
                admitted = self.pool.admit()
                columns = await self.pool.run(self.feedback_reader.read, body)
            self.feedback_log.append_rows(columns)
            stored = len(columns[FEEDBACK_REQUEST_ID_COLUMN])
            status, document = 200, {"stored": stored}
        except Exception as e:  # every failure is an answer (failure)
            status, document, headers = failure(e, "storing feedback")
        finally:
            if admitted is not None:
                self.pool.leave(admitted)
        await send_json(send, status, document, None, headers)
        self.metrics.observe_feedback(status, time.perf_counter() - started, stored)

    def _record(self, arrays: Batch, prediction: Prediction, request_id: str | None) -> None:
        """Metrics and the inference log, each on its own: one failing never costs the other."""
        try:
            if prediction.class_positions is not None:
                self.metrics.observe_classes(prediction.class_positions)
            elif self.predictor.is_classifier:
                self.metrics.observe_class_labels(prediction.values)
            else:
                self.metrics.observe_values(prediction.values)
        except Exception:
            logger.exception("prediction metrics update failed")
        if self.inference_log is not None:
            values = prediction.values
            if not self._logged:  # the batch goes to the log within a second whatever comes
                asyncio.get_running_loop().call_later(LOG_BATCH_SECONDS, self._flush_log)
            self._logged.append(
                Logged(arrays, values, request_id, prediction.probabilities, time.time())
            )
            self._logged_rows += len(values)
            if len(self._logged) >= LOG_BATCH_REQUESTS or self._logged_rows >= LOG_BATCH_ROWS:
                self._flush_log()
        if self.live_quality is not None and request_id is not None:
            self.live_quality.observe(request_id, prediction.values)

    def _flush_log(self) -> None:
        """The answered requests not yet in the inference log, into it."""
        logged, self._logged, self._logged_rows = self._logged, [], 0
        if not logged or self.inference_log is None:
            return
        try:
            self.inference_log.append_many(logged)
        except Exception:
            logger.exception("inference log append failed")
            self.metrics.inference_log_failed(len(logged))
