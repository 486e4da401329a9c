"""Where things live in the artifact store; shared by the operator and the runtime.

Per model version ``<root>/<namespace>/<model>/<version>/`` and, per Deployment, inference logs
under ``<root>/<namespace>/_inference/<deployment>/``: one directory per serving model version
(``<deployment>/<modelversion>/``, so a window never mixes two versions' schemas by accident) and
the ground truth posted to ``/feedback`` in ``<deployment>/_feedback/`` (a ModelVersion name is a
DNS label, so it never starts with ``_``).
"""

from __future__ import annotations

MODEL_FILE = "model.joblib"
DIGEST_FILE = "model.sha256"
SCHEMA_FILE = "schema.json"
METRICS_FILE = "metrics.json"
LINEAGE_FILE = "lineage.json"
REFERENCE_FILE = "reference.parquet"
CALIBRATION_FILE = "calibration.json"
"""Per-class isotonic knots for the logged probabilities (runtime.quality.Calibration)."""

RESERVED_COLUMN_PREFIX = "_mlkube_"
"""The inference log's own columns start with this; no feature may, so none collides with them."""
LOG_PREDICTION_COLUMN = f"{RESERVED_COLUMN_PREFIX}prediction"
LOG_TS_COLUMN = f"{RESERVED_COLUMN_PREFIX}ts"
"""int64 epoch milliseconds: when the row was logged (or the label received)."""
LOG_REQUEST_ID_COLUMN = f"{RESERVED_COLUMN_PREFIX}request_id"
"""string: the row's request id, ``<id>-<row>`` (``id`` from ``X-Request-ID``, the body's ``id``,
or generated); what feedback names in ``requestId``."""
LOG_MODEL_VERSION_COLUMN = f"{RESERVED_COLUMN_PREFIX}model_version"
"""string: the ModelVersion that answered (``MLKUBE_MODEL_VERSION``)."""
LOG_PROBABILITIES_COLUMN = f"{RESERVED_COLUMN_PREFIX}probabilities"
"""fixed-size list of float64, classifiers with ``predict_proba`` only: one probability per class,
in the order of the Parquet schema metadata key ``LOG_CLASSES_METADATA`` (a JSON list)."""
LOG_CLASSES_METADATA = b"mlkube.classes"

FEEDBACK_DIR = "_feedback"
FEEDBACK_REQUEST_ID_COLUMN = "requestId"
FEEDBACK_LABEL_COLUMN = "label"
"""Feedback segments and bulk feedback files share one shape: ``requestId``, ``label`` (the
ground truth, in the type of the model's predictions) and one float64 column per named outcome;
segments add ``LOG_TS_COLUMN`` (when the label came), which orders duplicates (last write wins)."""


def with_scheme(uri: str) -> str:
    return uri if "://" in uri else f"file://{uri}"


def join(root: str, *parts: str | int) -> str:
    return "/".join([with_scheme(root).rstrip("/"), *(str(p).strip("/") for p in parts)])


def version_uri(root: str, namespace: str, model: str, version: int) -> str:
    return join(root, namespace, model, version)


def inference_log_uri(root: str, namespace: str, deployment: str) -> str:
    return join(root, namespace, "_inference", deployment)


def version_log_uri(log_uri: str, model_version: str) -> str:
    """Where one model version's servers write their part of a Deployment's inference log."""
    return join(log_uri, model_version)


def feedback_uri(log_uri: str) -> str:
    """Where a Deployment's servers store the labels posted to ``/feedback``."""
    return join(log_uri, FEEDBACK_DIR)
