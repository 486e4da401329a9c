"""Where things live in the artifact store; shared by the operator and the runtime.

Per model version ``<root>/<namespace>/<model>/<version>/`` and, per Deployment, inference logs
under ``<root>/<namespace>/_inference/<deployment>/``.
"""

from __future__ import annotations

MODEL_FILE = "model.joblib"
DIGEST_FILE = "model.sha256"
SCHEMA_FILE = "schema.json"
METRICS_FILE = "metrics.json"
LINEAGE_FILE = "lineage.json"
REFERENCE_FILE = "reference.parquet"

RESERVED_COLUMN_PREFIX = "_mlkube_"
"""The inference log's own columns start with this; no feature may, so none collides with them."""
LOG_PREDICTION_COLUMN = f"{RESERVED_COLUMN_PREFIX}prediction"
LOG_TS_COLUMN = f"{RESERVED_COLUMN_PREFIX}ts"


def with_scheme(uri: str) -> str:
    return uri if "://" in uri else f"file://{uri}"


def join(root: str, *parts: str | int) -> str:
    return "/".join([with_scheme(root).rstrip("/"), *(str(p).strip("/") for p in parts)])


def version_uri(root: str, namespace: str, model: str, version: int) -> str:
    return join(root, namespace, model, version)


def inference_log_uri(root: str, namespace: str, deployment: str) -> str:
    return join(root, namespace, "_inference", deployment)
