"""Argo CD health checks and resource actions for the four kinds, run by a real Lua interpreter.

The scripts under charts/argocd/resource_customizations/mlkube.io/ run here the way Argo CD runs
them: `obj` set to the object, in a sandbox with only the base functions, `table` and
`require("os")` (date and time), no string or math library (Argo CD's default for scripts
configured in argocd-cm). Argo CD's VM (gopher-lua) speaks Lua 5.1, so every case runs under 5.1
and 5.4. Each case is one entry of a health_test.yaml or action_test.yaml in Argo CD's format.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import pytest
import yaml
from pydantic import BaseModel

from mlkube.api.batchprediction import BatchPrediction, BatchPredictionSpec, BatchPredictionStatus
from mlkube.api.common import ApiModel
from mlkube.api.crdgen import KINDS
from mlkube.api.deployment import Deployment, DeploymentSpec, DeploymentStatus
from mlkube.api.driftmonitor import DriftMonitor
from mlkube.api.modelversion import Approval, ModelVersion
from mlkube.api.trainingjob import TrainingJob, TrainingJobStatus
from mlkube.core.actions import ACTION_ANNOTATION, action_value, pending_action
from mlkube.core.batch import Observation as BatchObservation
from mlkube.core.batch import decide as decide_batch
from mlkube.core.canary import ACTIONS, Observation, decide
from mlkube.core.conditions import timestamp
from mlkube.core.training import Outcome, training_status

if TYPE_CHECKING:
    from mlkube.core.canary import Action

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = ROOT / "charts/argocd/resource_customizations/mlkube.io"
LUA_VERSIONS = ["lua51", "lua54"]
NOW = datetime(2026, 11, 27, 12, 30, tzinfo=UTC)
"""The clock the action scripts read (os.date); the expected outputs carry this time."""
MODELS: dict[str, type[BaseModel]] = {
    "TrainingJob": TrainingJob,
    "ModelVersion": ModelVersion,
    "Deployment": Deployment,
    "DriftMonitor": DriftMonitor,
    "BatchPrediction": BatchPrediction,
}

SANDBOX = """
local source, name, object, now = ...
local real_date, real_time = os.date, os.time
local safe_os = {
  date = function(format, time) return real_date(format, time or now) end,
  time = function(t) if t == nil then return now end return real_time(t) end,
}
local env = {obj = object, table = table}
for _, f in ipairs({"assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
    "rawset", "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type",
    "unpack", "xpcall"}) do
  env[f] = _G[f]
end
env.require = function(module)
  if module == "os" then return safe_os end
  error("module " .. module .. " is not in Argo CD's Lua sandbox")
end
env._G = env
getmetatable("").__index = nil  -- no string library: ("x"):sub() fails as it does in Argo CD
local chunk
if setfenv then
  chunk = assert(loadstring(source, name))
  setfenv(chunk, env)
else
  chunk = assert(load(source, name, "t", env))
end
return chunk()
"""


@dataclass(frozen=True)
class Lua:
    """One Lua interpreter version, running scripts in Argo CD's sandbox."""

    version: str

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"lupa.{self.version}")

    def run(self, script: Path, obj: dict[str, Any]) -> Any:
        module = self.module
        runtime = module.LuaRuntime()
        sandbox = runtime.execute(f"return function(...) {SANDBOX} end")
        lua_obj = runtime.table_from(obj, recursive=True)
        result = sandbox(script.read_text(), f"@{script.name}", lua_obj, int(NOW.timestamp()))
        return to_python(module, result, obj)


def to_python(module: ModuleType, value: Any, like: Any = None) -> Any:
    """A Lua value as JSON-like Python; an empty table takes the shape the original value had
    (Argo CD's cleanReturnedObj), since Lua cannot tell an empty list from an empty map."""
    if module.lua_type(value) != "table":
        return value
    items = dict(value.items())
    if not items:
        return {} if isinstance(like, dict) else []
    if set(items) == set(range(1, len(items) + 1)):
        olds = like if isinstance(like, list) else []
        return [
            to_python(module, items[i + 1], olds[i] if i < len(olds) else None)
            for i in range(len(items))
        ]
    olds_by_key = like if isinstance(like, dict) else {}
    return {k: to_python(module, v, olds_by_key.get(k)) for k, v in items.items()}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def cases(test_file: str, section: str) -> list[Any]:
    """(folder, case) for every entry of `section` in every `test_file`, named by path."""
    found = []
    for path in sorted(CUSTOMIZATIONS.glob(f"*/**/{test_file}")):
        for case in load(path).get(section) or []:
            name = f"{path.parent.relative_to(CUSTOMIZATIONS)}/{case.get('action', '')}:{case['inputPath']}"
            found.append(pytest.param(path.parent, case, id=name.replace("/:", "/")))
    return found


@pytest.fixture(params=LUA_VERSIONS)
def lua(request: pytest.FixtureRequest) -> Lua:
    return Lua(request.param)


# -- health ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("folder", "case"), cases("health_test.yaml", "tests"))
def test_health_matches_the_expected_status_and_message(
    lua: Lua, folder: Path, case: dict[str, Any]
) -> None:
    obj = load(folder / case["inputPath"])
    assert lua.run(folder / "health.lua", obj) == case["healthStatus"]


def test_every_kind_has_a_health_check_tested_progressing_healthy_and_degraded() -> None:
    for kind in KINDS:
        folder = CUSTOMIZATIONS / kind.kind
        assert (folder / "health.lua").is_file(), kind.kind
        tested = {t["healthStatus"]["status"] for t in load(folder / "health_test.yaml")["tests"]}
        assert {"Progressing", "Healthy", "Degraded"} <= tested, kind.kind


def test_no_status_and_an_unobserved_generation_are_progressing(lua: Lua) -> None:
    for kind in KINDS:
        folder = CUSTOMIZATIONS / kind.kind
        fresh = load(folder / "testdata/no_status.yaml")
        assert lua.run(folder / "health.lua", fresh) == {
            "status": "Progressing",
            "message": "Waiting for the mlkube operator",
        }
        behind = load(folder / "testdata/progressing_generation_behind.yaml")
        assert lua.run(folder / "health.lua", behind)["status"] == "Progressing", kind.kind


def test_testdata_statuses_are_exactly_what_the_operator_models_hold() -> None:
    """The status shapes the Lua reads are the operator's own, not guesses: each status round-trips
    through its model (a misspelt field would be dropped), each spec parses unless it is the
    invalid one a case is about."""
    for path in sorted(CUSTOMIZATIONS.glob("*/**/testdata/*.yaml")):
        obj = load(path)
        model = MODELS[obj["kind"]]
        if "status" in obj:
            status_model = model.model_fields["status"].annotation
            assert isinstance(status_model, type) and issubclass(status_model, ApiModel)
            assert status_model.model_validate(obj["status"]).to_api() == obj["status"], path
        if "invalid_spec" not in path.name:
            model.model_validate(obj)


def test_what_the_operator_decides_now_reads_as_expected(lua: Lua) -> None:
    """Live, not frozen testdata: a canary aborted by the state machine and a training that failed
    its gate, as the operator's own functions write them today."""
    base = load(CUSTOMIZATIONS / "Deployment/testdata/suspended_paused.yaml")
    paused = DeploymentStatus.model_validate(base["status"])
    spec = DeploymentSpec.model_validate(base["spec"])
    aborted = decide(spec, paused, Observation("iris-v2", action="abort"), NOW, 2).status
    health = lua.run(CUSTOMIZATIONS / "Deployment/health.lua", {**base, "status": aborted.to_api()})
    assert health == {
        "status": "Degraded",
        "message": "Aborted: rolled back iris-v2: aborted by request; iris-v1 serves",
    }
    job = load(CUSTOMIZATIONS / "TrainingJob/testdata/no_status.yaml")
    failed = training_status(
        TrainingJobStatus(), Outcome("Failed", "DatasetNotFound", "builtin:nope"), 1, NOW
    )
    health = lua.run(CUSTOMIZATIONS / "TrainingJob/health.lua", {**job, "status": failed.to_api()})
    assert health == {"status": "Degraded", "message": "DatasetNotFound: builtin:nope"}
    run = load(CUSTOMIZATIONS / "BatchPrediction/testdata/progressing_running.yaml")
    shards_job = {"status": {"completedIndexes": "0-3", "conditions": [
        {"type": "Complete", "status": "True"}]}}  # fmt: skip
    finishing = decide_batch(
        BatchPredictionSpec.model_validate(run["spec"]),
        BatchPredictionStatus.model_validate(run["status"]),
        BatchObservation(shards_job=shards_job),
        NOW,
        1,
    ).status
    health = lua.run(
        CUSTOMIZATIONS / "BatchPrediction/health.lua", {**run, "status": finishing.to_api()}
    )
    assert health == {
        "status": "Progressing",
        "message": "WritingManifest: 4 of 4 shards done; 3,500,000 of 3,500,000 rows scored; "
        "writing the manifest",
    }


# -- actions --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("folder", "case"), cases("action_test.yaml", "discoveryTests"))
def test_discovery_offers_the_expected_actions(
    lua: Lua, folder: Path, case: dict[str, Any]
) -> None:
    offered = lua.run(folder / "discovery.lua", load(folder / case["inputPath"]))
    actions = [
        {"name": name, "disabled": isinstance(value, dict) and bool(value.get("disabled"))}
        for name, value in (offered.items() if isinstance(offered, dict) else [])
    ]
    by_name = sorted(case["result"], key=lambda a: a["name"])
    assert sorted(actions, key=lambda a: a["name"]) == by_name


@pytest.mark.parametrize(("folder", "case"), cases("action_test.yaml", "actionTests"))
def test_action_returns_the_expected_object(lua: Lua, folder: Path, case: dict[str, Any]) -> None:
    script = folder / case["action"] / "action.lua"
    result = lua.run(script, load(folder / case["inputPath"]))
    assert result == load(folder / case["expectedOutputPath"])


def test_deployment_actions_are_exactly_the_verbs_the_operator_accepts(lua: Lua) -> None:
    """Each writes `<verb>@<time>` as the CLI does, and the operator's parser takes it."""
    folder = CUSTOMIZATIONS / "Deployment/actions"
    scripts = sorted(folder.glob("*/action.lua"))
    assert sorted(s.parent.name for s in scripts) == sorted(ACTIONS)
    offered = lua.run(folder / "discovery.lua", load(folder / "testdata/no_status.yaml"))
    assert sorted(offered) == sorted(ACTIONS)
    for script in scripts:
        verb = script.parent.name
        annotations = lua.run(script, load(folder / "testdata/no_status.yaml"))["metadata"][
            "annotations"
        ]
        assert annotations == {ACTION_ANNOTATION: action_value(cast("Action", verb), NOW)}
        assert pending_action(annotations, None) == (verb, annotations[ACTION_ANNOTATION])


def test_approve_and_reject_write_an_approval_the_operator_reads(lua: Lua) -> None:
    folder = CUSTOMIZATIONS / "ModelVersion/actions"
    for verb, approved in (("approve", True), ("reject", False)):
        obj = lua.run(
            folder / verb / "action.lua", load(folder / "testdata/awaiting_approval.yaml")
        )
        assert Approval.model_validate(obj["spec"]["approval"]) == Approval(
            approved=approved, by="system:serviceaccount:argocd:argocd-server", at=timestamp(NOW)
        )


@pytest.mark.parametrize(
    "source",
    ['return {status = string.upper("healthy")}', 'return {status = ("healthy"):upper()}',
     'return {status = "Healthy", message = "" .. math.floor(1.5)}', "return {status = os.date()}"],
)  # fmt: skip
def test_the_sandbox_refuses_what_argo_cd_leaves_out(lua: Lua, tmp_path: Path, source: str) -> None:
    """No string, math or global os library: a script relying on them would fail in Argo CD."""
    script = tmp_path / "health.lua"
    script.write_text(source)
    with pytest.raises(lua.module.LuaError, match=r"attempt to (index|call)"):
        lua.run(script, {})


# -- argocd-cm ------------------------------------------------------------------------------------


def argocd_cm() -> dict[str, Any]:
    out = subprocess.run(
        [ROOT / "hack/argocd-cm"],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    parsed: dict[str, Any] = yaml.safe_load(out)
    return parsed


def test_argocd_cm_patch_carries_every_script_verbatim() -> None:
    data = argocd_cm()["data"]
    for kind in KINDS:
        health = data[f"resource.customizations.health.mlkube.io_{kind.kind}"]
        assert health == (CUSTOMIZATIONS / kind.kind / "health.lua").read_text()
    for kind_name in ("Deployment", "ModelVersion"):
        folder = CUSTOMIZATIONS / kind_name / "actions"
        actions = yaml.safe_load(data[f"resource.customizations.actions.mlkube.io_{kind_name}"])
        assert actions["discovery.lua"] == (folder / "discovery.lua").read_text()
        assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
            script.parent.name: script.read_text() for script in folder.glob("*/action.lua")
        }
