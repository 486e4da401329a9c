"""The CRDs are generated from the pydantic models, are structural, and are committed current."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ConfigDict, Field, ValidationError

from mlkube.api.batchprediction import BatchPrediction
from mlkube.api.common import ApiModel, cel, immutable, refusal, validations
from mlkube.api.crdgen import KINDS, all_crds, rendered_files, structural_schema
from mlkube.api.deployment import Deployment
from mlkube.api.driftmonitor import CRON_PATTERN, DriftMonitor
from mlkube.api.modelversion import ModelVersion
from mlkube.api.trainingjob import TrainingJob, TrainingJobSpec

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_SHORT_NAMES = {
    "cm", "cs", "csr", "cj", "crd", "crds", "deploy", "ds", "ep", "ev", "hpa", "ing", "limits",
    "netpol", "no", "ns", "pc", "pdb", "po", "psp", "pv", "pvc", "quota", "rc", "rs", "sa", "sc",
    "sts", "svc", "vwc", "mwc", "ingclass", "csinode", "vac",
}  # fmt: skip
MODELS = {
    "TrainingJob": TrainingJob,
    "ModelVersion": ModelVersion,
    "Deployment": Deployment,
    "DriftMonitor": DriftMonitor,
    "BatchPrediction": BatchPrediction,
}


@pytest.mark.parametrize("path", sorted(rendered_files()), ids=str)
def test_committed_crds_match_the_models(path: Path) -> None:
    on_disk = (ROOT / path).read_text() if (ROOT / path).exists() else "<missing>"
    assert on_disk == rendered_files()[path], f"{path} is stale: run `make crds`"


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += walk(sub, f"{path}.{name}")
    if "items" in node:
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_schemas_are_structural(name: str) -> None:
    schema = all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "const", "$defs"} & node.keys(), (
            path
        )
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{path} has no type"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_kind_has_status_subresource_columns_and_the_mlkube_category(kind: Any) -> None:
    crd = all_crds()[f"{kind.crd_name}.yaml"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["mlkube"]
    assert not set(crd["spec"]["names"]["shortNames"]) & BUILTIN_SHORT_NAMES
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[-1] == "Age"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"conditions", "observedGeneration"} <= status.keys()
    assert status["conditions"]["x-kubernetes-list-type"] == "map"


def test_deployment_crd_is_group_qualified_and_never_apps() -> None:
    crd = all_crds()["deployments.mlkube.io.yaml"]
    assert crd["metadata"]["name"] == "deployments.mlkube.io"
    assert crd["spec"]["group"] == "mlkube.io"


def rules(schema: dict[str, Any]) -> list[str]:
    return [r["rule"] for _, node in walk(schema) for r in node.get("x-kubernetes-validations", [])]


def spec_schema(kind: str) -> dict[str, Any]:
    crd = all_crds()[f"{kind}.mlkube.io.yaml"]
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    return schema


def test_cross_field_rules_are_cel_in_the_schema() -> None:
    deployment = rules(spec_schema("deployments"))
    assert any("isSorted()" in r for r in deployment), "canary weights must rise"
    assert any(".max() == 100" in r for r in deployment), "canary weights must end at 100"
    assert any("has(self.modelVersion)" in r for r in deployment)
    training = rules(spec_schema("trainingjobs"))
    assert training.count("self == oldSelf") >= 3, "model, dataset and estimator are immutable"
    estimator = spec_schema("trainingjobs")["properties"]["estimator"]["properties"]["className"]
    assert "sklearn.linear_model.LogisticRegression" in estimator["enum"]
    assert any("self.matches(" in r for r in rules(spec_schema("driftmonitors")))


def test_every_cel_message_says_must() -> None:
    for crd in all_crds().values():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for _, node in walk(schema):
            for rule in node.get("x-kubernetes-validations", []):
                assert " must " in rule["message"], rule


def test_nested_defaults_are_in_the_schema() -> None:
    split = spec_schema("trainingjobs")["properties"]["split"]
    assert split["default"] == {"testPercent": 20, "seed": 42, "stratify": True}
    window = spec_schema("driftmonitors")["properties"]["window"]
    assert window["default"] == {"rows": 10000}


@pytest.mark.parametrize(
    "schedule", ["*/5 * * * *", "0 3 * * 1-5", "@hourly", "0 0 1,15 JAN mon", "15 */2 * * *"]
)
def test_cron_rule_accepts(schedule: str) -> None:
    assert re.match(CRON_PATTERN, schedule)


@pytest.mark.parametrize(
    "schedule", ["* * * *", "every minute", "* * * * * *", "@often", "*/5 * * * * extra"]
)
def test_cron_rule_rejects(schedule: str) -> None:
    assert not re.match(CRON_PATTERN, schedule)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse_as_their_kind(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        MODELS[document["kind"]].model_validate(document)


UNBOUNDED_REPEAT = re.compile(r"(?<!\\)[*+]|\{\d+,\}")


def bounded_string(node: dict[str, Any]) -> bool:
    """maxLength, an enum, a date-time, or a pattern that repeats nothing without bound."""
    pattern = node.get("pattern")
    return (
        "maxLength" in node
        or "enum" in node
        or node.get("format") == "date-time"
        or (pattern is not None and not UNBOUNDED_REPEAT.search(pattern))
    )


def unbounded(path: str, node: dict[str, Any]) -> list[str]:
    """What about one schema node has no bound; a node of any type needs all three."""
    types = {node["type"]} if "type" in node else {"string", "array", "object"}
    if node.get("x-kubernetes-int-or-string"):
        types = {"string"}
    missing = []
    if "string" in types and not bounded_string(node):
        missing.append(f"{path}: a string without maxLength")
    if "array" in types and "maxItems" not in node:
        missing.append(f"{path}: a list without maxItems")
    free_form = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if "object" in types and free_form and "maxProperties" not in node:
        missing.append(f"{path}: a map without maxProperties")
    values = node.get("additionalProperties")
    typed = isinstance(values, dict) and (
        "type" in values or "x-kubernetes-int-or-string" in values
    )
    key_rules = [r for r in node.get("x-kubernetes-validations", []) if "k.size() <=" in r["rule"]]
    if typed and not key_rules:
        missing.append(f"{path}: a map whose keys have no bound (keys_at_most)")
    return missing


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_every_string_list_and_map_has_a_bound(name: str) -> None:
    """One unbounded field lets one tenant's objects fill the operator's memory (issue 16):
    a new field without a bound fails here."""
    schema = all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    found = [
        problem
        for part in ("spec", "status")
        for path, node in walk(schema["properties"][part], f".{part}")
        for problem in unbounded(path, node)
    ]
    assert not found, "\n".join(found)


def test_a_fields_own_rules_come_beside_its_models_rules_optional_or_not() -> None:
    class Window(ApiModel):
        model_config = ConfigDict(json_schema_extra=validations(cel("self.a < 5", "a too big")))
        a: int = 0

    class Spec(ApiModel):
        required: Window = Field(json_schema_extra=immutable("required"))
        optional: Window | None = Field(default=None, json_schema_extra=immutable("optional"))

    properties = structural_schema(Spec)["properties"]
    for name in ("required", "optional"):
        rules = [r["rule"] for r in properties[name]["x-kubernetes-validations"]]
        assert rules == ["self.a < 5", "self == oldSelf"], name


def test_a_template_of_another_kinds_spec_carries_none_of_its_transition_rules() -> None:
    crds = {c["spec"]["names"]["kind"]: yaml.safe_dump(c) for c in all_crds().values()}
    assert "oldSelf" in crds["TrainingJob"]
    assert "oldSelf" not in crds["DriftMonitor"], "its retrain template stays editable"
    assert "search must not change after creation" not in crds["DriftMonitor"]


def test_a_spec_the_operator_refuses_names_the_field_without_pydantics_prefix() -> None:
    values = {"values": list(range(40))}
    spec = {
        "model": "iris", "dataset": {"uri": "builtin:iris"}, "target": "target",
        "estimator": {"className": "sklearn.linear_model.LogisticRegression"},
        "search": {"method": "Grid", "space": {"C": values, "max_iter": values}},
    }  # fmt: skip
    with pytest.raises(ValidationError) as refused:
        TrainingJobSpec.model_validate(spec)
    message = refusal(refused.value)
    assert message.startswith("spec.search: a Grid must have at most 500 trials"), message
    assert "Value error" not in message
