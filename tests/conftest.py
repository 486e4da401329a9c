"""Tiers by folder: tests/unit -> unit, tests/runtime -> runtime, tests/cluster and
tests/integration -> integration, tests/e2e -> e2e, so `pytest -m unit` never needs a marker
remembered by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.cluster.fixtures",
    "tests.integration.fixtures",
    "tests.s3_fixtures",
    "tests.mlflow_fixtures",
]

TIERS = {
    "unit": "unit",
    "runtime": "runtime",
    "cluster": "integration",
    "integration": "integration",
    "e2e": "e2e",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        relative = Path(item.path).relative_to(root)
        tier = TIERS.get(relative.parts[0]) if len(relative.parts) > 1 else None
        if tier and not any(item.iter_markers(tier)):
            item.add_marker(getattr(pytest.mark, tier))
