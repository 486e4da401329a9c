"""Cluster tests; the fixtures live in tests/cluster/fixtures.py (also a pytest plugin).

The top-level tests/conftest.py may register it with ``pytest_plugins``; when run on its own,
this directory registers it here, once, so that session fixtures exist only once.
"""

import pytest

PLUGIN = "tests.cluster.fixtures"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)
