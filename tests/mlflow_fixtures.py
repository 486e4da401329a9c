"""The test bed's MLflow tracking server, for tests of spec.tracking.mlflow against a real one.

A pytest plugin (``pytest_plugins`` in tests/conftest.py).

``mlflow_server`` (session): the ``mlflow server`` of ``hack/mlflow`` (SQLite, basic auth). When the
environment already names one (``MLFLOW_TRACKING_URI`` and the admin's
``MLKUBE_MLFLOW_ADMIN_USERNAME``/``_PASSWORD``, as ``hack/test`` exports them) it is used as is;
otherwise ``hack/mlflow up`` starts it, and ``hack/mlflow down`` stops it at the end unless it was
running before. Tests talk to it as a team would: each team a user of its own (``team``), checked
through MLflow's REST API (``rest``) and its own client.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HACK_MLFLOW = Path(__file__).resolve().parents[1] / "hack" / "mlflow"
ENV_NAMES = ("MLFLOW_TRACKING_URI", "MLKUBE_MLFLOW_ADMIN_USERNAME", "MLKUBE_MLFLOW_ADMIN_PASSWORD")


def hack_mlflow(*args: str) -> str:
    done = subprocess.run([str(HACK_MLFLOW), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"hack/mlflow {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


@dataclass(frozen=True)
class Team:
    """A user of the tracking server, as a team's credentials Secret holds it."""

    username: str
    password: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    admin: Team

    def rest(
        self, method: str, path: str, body: dict[str, Any] | None = None, as_: Team | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of one call of MLflow's REST API (mlflow.org/docs/latest/
        rest-api), as `as_` (default: the admin)."""
        who = as_ or self.admin
        token = base64.b64encode(f"{who.username}:{who.password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.uri}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text or b"{}")
            except json.JSONDecodeError:
                return e.code, {"text": text.decode(errors="replace")}

    def team(self, name: str) -> Team:
        """A new user, unique to this call (name is a prefix)."""
        team = Team(f"{name}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
        status, body = self.rest(
            "POST",
            "/api/2.0/mlflow/users/create",
            {"username": team.username, "password": team.password},
        )
        assert status == 200, f"creating user {team.username}: {status} {body}"
        return team

    def run(self, run_id: str) -> dict[str, Any]:
        status, body = self.rest("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}")
        assert status == 200, body
        run: dict[str, Any] = body["run"]
        return run


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    if all(os.environ.get(name) for name in ENV_NAMES):
        env = {name: os.environ[name] for name in ENV_NAMES}
        was_running = True
    else:
        was_running = (
            subprocess.run(
                [str(HACK_MLFLOW), "status"], capture_output=True, check=False
            ).returncode
            == 0
        )
        env = dict(line.split("=", 1) for line in hack_mlflow("up").splitlines() if "=" in line)
    admin = Team(env["MLKUBE_MLFLOW_ADMIN_USERNAME"], env["MLKUBE_MLFLOW_ADMIN_PASSWORD"])
    try:
        yield MlflowServer(env["MLFLOW_TRACKING_URI"], admin)
    finally:
        if not was_running:
            hack_mlflow("down")
