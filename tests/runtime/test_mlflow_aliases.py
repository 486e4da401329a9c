"""`mlkube-runtime mlflow-aliases` against a real `mlflow server` (hack/mlflow: SQLite, basic
auth): it sets, moves and deletes a registered model's aliases with the team's credentials,
again and again alike, and names a server that refuses or cannot be reached."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from mlkube.runtime.cli import main
from tests.mlflow_fixtures import MlflowServer, Team

CHAMPION, CHALLENGER = "champion_team-a_iris", "challenger_team-a_iris"


def registered(server: MlflowServer, team: Team, versions: int = 2) -> str:
    """A registered model of `team` with `versions` versions, made through MLflow's REST API."""
    name = f"iris-{uuid.uuid4().hex[:8]}"

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = server.rest("POST", f"/api/2.0/mlflow/{path}", body, as_=team)
        assert status == 200, answer
        return answer

    experiment = call("experiments/create", {"name": name})["experiment_id"]
    info = call("runs/create", {"experiment_id": experiment})["run"]["info"]
    call("registered-models/create", {"name": name})
    for _ in range(versions):
        source = {"name": name, "source": f"{info['artifact_uri']}/model", "run_id": info["run_id"]}
        call("model-versions/create", source)
    return name


def aliases(server: MlflowServer, name: str) -> dict[str, str]:
    status, found = server.rest("GET", f"/api/2.0/mlflow/registered-models/get?name={name}")
    assert status == 200, found
    return {a["alias"]: a["version"] for a in found["registered_model"].get("aliases", [])}


def as_team(monkeypatch: pytest.MonkeyPatch, team: Team | None) -> None:
    """The env a Job's pod gets from its credentialsSecret (none: no Secret)."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (team.env if team else {}).items():
        monkeypatch.setenv(name, value)


def sync(tmp_path: Path, uri: str, model: str, *args: str) -> tuple[int, dict[str, Any]]:
    """(exit code, result) of one `mlkube-runtime mlflow-aliases`."""
    result = tmp_path / f"result-{uuid.uuid4().hex[:6]}.json"
    argv = ["mlflow-aliases", "--tracking-uri", uri, "--registered-model", model, *args]
    code = main([*argv, "--result-file", str(result)])
    return code, json.loads(result.read_text())


def test_aliases_are_set_moved_and_deleted_and_setting_them_again_changes_nothing(
    tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    team = mlflow_server.team("team-a")
    model = registered(mlflow_server, team)
    as_team(monkeypatch, team)
    uri = mlflow_server.uri

    code, result = sync(tmp_path, uri, model, "--set", f"{CHAMPION}=1", "--delete", CHALLENGER)
    assert (code, result["status"]) == (0, "Synced"), "deleting an alias not there is fine"
    assert aliases(mlflow_server, model) == {CHAMPION: "1"}

    canary = ("--set", f"{CHAMPION}=1", "--set", f"{CHALLENGER}=2")
    assert sync(tmp_path, uri, model, *canary)[0] == 0
    assert sync(tmp_path, uri, model, *canary)[0] == 0, "again: already so"
    assert aliases(mlflow_server, model) == {CHAMPION: "1", CHALLENGER: "2"}

    promoted = ("--set", f"{CHAMPION}=2", "--delete", CHALLENGER)
    code, result = sync(tmp_path, uri, model, *promoted)
    assert code == 0
    assert result == {"status": "Synced", "set": {CHAMPION: "2"}, "deleted": [CHALLENGER]}
    assert aliases(mlflow_server, model) == {CHAMPION: "2"}, "champion moved from 1 to 2"


def test_another_teams_credentials_or_none_are_refused_and_change_nothing(
    tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    team_a, team_b = mlflow_server.team("team-a"), mlflow_server.team("team-b")
    model = registered(mlflow_server, team_a)
    as_team(monkeypatch, team_a)
    assert sync(tmp_path, mlflow_server.uri, model, "--set", f"{CHAMPION}=1")[0] == 0

    for team, code in ((team_b, "PERMISSION_DENIED"), (None, "UNAUTHENTICATED")):
        as_team(monkeypatch, team)
        exit_code, result = sync(tmp_path, mlflow_server.uri, model, "--set", f"{CHAMPION}=2")
        assert exit_code != 0
        assert (result["status"], result["reason"]) == ("Failed", "TrackingUnavailable")
        assert code in result["message"]
        assert f"cannot set aliases of {model!r} at {mlflow_server.uri}" in result["message"]
    assert aliases(mlflow_server, model) == {CHAMPION: "1"}


def test_a_version_mlflow_does_not_have_is_refused_by_name(
    tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    team = mlflow_server.team("team-a")
    model = registered(mlflow_server, team, versions=1)
    as_team(monkeypatch, team)
    code, result = sync(tmp_path, mlflow_server.uri, model, "--set", f"{CHAMPION}=7")
    assert code != 0
    assert (result["status"], result["reason"]) == ("Failed", "AliasRefused")
    assert "RESOURCE_DOES_NOT_EXIST" in result["message"]
    assert aliases(mlflow_server, model) == {}


def test_an_unreachable_server_is_named_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_team(monkeypatch, None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    code, result = sync(tmp_path, uri, "iris", "--set", f"{CHAMPION}=1")
    assert code != 0
    assert (result["status"], result["reason"]) == ("Failed", "TrackingUnavailable")
    assert result["message"].startswith(f"tracking.mlflow: cannot set aliases of 'iris' at {uri}: ")
    assert "cannot connect" in result["message"]
