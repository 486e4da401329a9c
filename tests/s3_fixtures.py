"""The test bed's S3 server, for tests of the ``s3://`` store against a real one.

A pytest plugin (``pytest_plugins`` in tests/conftest.py).

``s3_server`` (session): the SeaweedFS server of ``hack/s3``. When the environment already names
one (``AWS_ENDPOINT_URL`` and ``MLKUBE_S3_BUCKET``, as ``hack/test`` exports them) it is used as
is; otherwise ``hack/s3 up`` starts it, and ``hack/s3 down`` stops it at the end unless it was
running before. The first run builds ``weed`` (hack/build-binaries.sh).
``s3_root`` (function): a fresh ``s3://<bucket>/test-<random>`` with the admin key in the
environment, where a pod would have it too.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HACK_S3 = Path(__file__).resolve().parents[1] / "hack" / "s3"
ENV_NAMES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "MLKUBE_S3_BUCKET",
)


def parse_env(text: str) -> dict[str, str]:
    """`NAME=value` lines, as hack/s3 prints them."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def hack_s3(*args: str) -> str:
    done = subprocess.run([str(HACK_S3), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"hack/s3 {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


@dataclass(frozen=True)
class S3Server:
    env: dict[str, str]
    """AWS_ENDPOINT_URL, the admin key, region and MLKUBE_S3_BUCKET."""

    @property
    def bucket(self) -> str:
        return self.env["MLKUBE_S3_BUCKET"]

    def identity(self, name: str, prefix: str) -> dict[str, str]:
        """The env of a key that may touch only ``s3://<bucket>/<prefix>/`` (hack/s3 identity)."""
        return {**self.env, **parse_env(hack_s3("identity", name, prefix))}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    if os.environ.get("AWS_ENDPOINT_URL") and os.environ.get("MLKUBE_S3_BUCKET"):
        yield S3Server({name: os.environ[name] for name in ENV_NAMES if name in os.environ})
        return
    status = subprocess.run([str(HACK_S3), "status"], capture_output=True, check=False)
    was_running = status.returncode == 0
    server = S3Server(parse_env(hack_s3("up")))
    try:
        yield server
    finally:
        if not was_running:
            hack_s3("down")


@pytest.fixture
def s3_root(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.bucket}/test-{uuid.uuid4().hex[:12]}"
