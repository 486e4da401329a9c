"""What the model server reads from its environment (the operator sets these on the pod).

``mlkube.runtime.serve`` lists the variables and what each does; docs/serving.md has the table.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from mlkube.runtime.live_quality import MAX_ROWS
from mlkube.runtime.metrics import PREDICTION_VALUE_BUCKETS

ENV_MODEL_URI = "MLKUBE_MODEL_URI"
ENV_MODEL_SHA256 = "MLKUBE_MODEL_SHA256"
ENV_MODEL_NAME = "MLKUBE_MODEL_NAME"
ENV_MODEL_VERSION_NUMBER = "MLKUBE_MODEL_VERSION_NUMBER"
ENV_INFERENCE_LOG_URI = "MLKUBE_INFERENCE_LOG_URI"
ENV_INFERENCE_LOG_MAX_BYTES = "MLKUBE_INFERENCE_LOG_MAX_BYTES"
ENV_POD_NAME = "MLKUBE_POD_NAME"
ENV_MODEL_VERSION = "MLKUBE_MODEL_VERSION"
ENV_PREDICTION_BUCKETS = "MLKUBE_PREDICTION_BUCKETS"
ENV_LIVE_QUALITY_ROWS = "MLKUBE_LIVE_QUALITY_ROWS"
ENV_FAULT_ERROR_PERCENT = "MLKUBE_FAULT_ERROR_PERCENT"
ENV_FAULT_DELAY_MS = "MLKUBE_FAULT_DELAY_MS"
ENV_MAX_ROWS = "MLKUBE_MAX_ROWS"
ENV_MAX_CONCURRENCY = "MLKUBE_MAX_CONCURRENCY"
ENV_MAX_QUEUED = "MLKUBE_MAX_QUEUED"
ENV_MIN_BODY_RATE = "MLKUBE_MIN_BODY_BYTES_PER_SECOND"
ENV_BODY_GRACE_SECONDS = "MLKUBE_BODY_GRACE_SECONDS"
ENV_GRPC_PORT = "MLKUBE_GRPC_PORT"
DEFAULT_MODEL_NAME = "model"
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MAX_QUEUED = 8
DEFAULT_MIN_BODY_RATE = 64 * 1024
DEFAULT_BODY_GRACE_SECONDS = 5.0


class ServeConfigError(Exception):
    """The environment does not describe a servable model."""


@dataclass(frozen=True)
class ServeSettings:
    """What the server reads from its environment."""

    model_uri: str
    model_sha256: str | None
    inference_log_uri: str | None
    inference_log_max_bytes: int | None
    pod_name: str
    model_version: str
    prediction_buckets: tuple[float, ...]
    live_quality_rows: int
    fault_error_percent: float
    fault_delay_ms: float
    max_rows: int = DEFAULT_MAX_ROWS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queued: int = DEFAULT_MAX_QUEUED
    min_body_rate: float = DEFAULT_MIN_BODY_RATE
    body_grace_seconds: float = DEFAULT_BODY_GRACE_SECONDS
    model_name: str = DEFAULT_MODEL_NAME
    """The Open Inference Protocol's and KServe v1's model name (the ModelVersion's model)."""
    model_version_number: str | None = None
    """The Open Inference Protocol's model version (the ModelVersion's number); None: unnamed."""
    grpc_port: int | None = None
    """Where the Open Inference Protocol's gRPC service listens; None: nowhere."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServeSettings:
        model_uri = environ.get(ENV_MODEL_URI, "").strip()
        if not model_uri:
            raise ServeConfigError(f"{ENV_MODEL_URI} must name the model version directory")
        buckets = environ.get(ENV_PREDICTION_BUCKETS, "").strip()
        return cls(
            model_uri=model_uri,
            model_sha256=environ.get(ENV_MODEL_SHA256, "").strip().lower() or None,
            inference_log_uri=environ.get(ENV_INFERENCE_LOG_URI, "").strip() or None,
            inference_log_max_bytes=int(
                _number_between(environ, ENV_INFERENCE_LOG_MAX_BYTES, 0, 2**62)
            )
            or None,
            pod_name=environ.get(ENV_POD_NAME, "").strip() or socket.gethostname(),
            model_version=environ.get(ENV_MODEL_VERSION, "").strip() or "unknown",
            prediction_buckets=(
                tuple(sorted(_number(ENV_PREDICTION_BUCKETS, b) for b in buckets.split(",")))
                if buckets
                else PREDICTION_VALUE_BUCKETS
            ),
            live_quality_rows=int(
                _number_between(environ, ENV_LIVE_QUALITY_ROWS, 0, 10**8, default=MAX_ROWS)
            ),
            fault_error_percent=_number_between(environ, ENV_FAULT_ERROR_PERCENT, 0, 100),
            fault_delay_ms=_number_between(environ, ENV_FAULT_DELAY_MS, 0, 600_000),
            max_rows=_integer_between(environ, ENV_MAX_ROWS, 1, 10**9, DEFAULT_MAX_ROWS),
            max_concurrency=_integer_between(
                environ, ENV_MAX_CONCURRENCY, 1, 1024, DEFAULT_MAX_CONCURRENCY
            ),
            max_queued=_integer_between(environ, ENV_MAX_QUEUED, 0, 10**5, DEFAULT_MAX_QUEUED),
            min_body_rate=_number_between(
                environ, ENV_MIN_BODY_RATE, 0, 10**12, default=DEFAULT_MIN_BODY_RATE
            ),
            body_grace_seconds=_number_between(
                environ, ENV_BODY_GRACE_SECONDS, 0, 3600, default=DEFAULT_BODY_GRACE_SECONDS
            ),
            model_name=_path_segment(environ, ENV_MODEL_NAME) or DEFAULT_MODEL_NAME,
            model_version_number=_path_segment(environ, ENV_MODEL_VERSION_NUMBER),
            grpc_port=_integer_between(environ, ENV_GRPC_PORT, 0, 65535, 0) or None,
        )


def _path_segment(environ: Mapping[str, str], name: str) -> str | None:
    """A name that goes into URL paths (``/v2/models/<name>/versions/<number>``): no ``/``,
    no ``:`` (KServe v1's ``<name>:predict``), no spaces."""
    value = environ.get(name, "").strip()
    if any(c in value for c in "/: ?#"):
        raise ServeConfigError(f"{name}={value!r} must not hold '/', ':', '?', '#' or spaces")
    return value or None


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ServeConfigError(f"{name}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ServeConfigError(f"{name}: {text!r} is not finite")
    return value


def _number_between(
    environ: Mapping[str, str], name: str, low: float, high: float, default: float = 0
) -> float:
    value = _number(name, environ.get(name, "").strip() or str(default))
    if not low <= value <= high:
        raise ServeConfigError(f"{name}={value:g} must be between {low:g} and {high:g}")
    return value


def _integer_between(
    environ: Mapping[str, str], name: str, low: int, high: int, default: int
) -> int:
    value = _number_between(environ, name, low, high, default)
    if not value.is_integer():
        raise ServeConfigError(f"{name}={value:g} must be a whole number")
    return int(value)
