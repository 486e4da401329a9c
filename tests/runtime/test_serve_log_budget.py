"""The server takes its inference log's byte budget from the environment the operator sets."""

from __future__ import annotations

import pytest

from mlkube.runtime.protocol.settings import ServeConfigError, ServeSettings

pytestmark = pytest.mark.runtime

MODEL = {"MLKUBE_MODEL_URI": "file:///models/iris/1"}


def test_the_budget_comes_from_the_environment() -> None:
    budget = {"MLKUBE_INFERENCE_LOG_MAX_BYTES": str(64 << 20)}
    assert ServeSettings.from_env({**MODEL, **budget}).inference_log_max_bytes == 64 << 20
    assert ServeSettings.from_env(MODEL).inference_log_max_bytes is None, "unset: no budget"
    with pytest.raises(ServeConfigError, match="MLKUBE_INFERENCE_LOG_MAX_BYTES"):
        ServeSettings.from_env({**MODEL, "MLKUBE_INFERENCE_LOG_MAX_BYTES": "-5"})
