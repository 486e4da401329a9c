"""Generate structural CRD schemas from the pydantic models.

Pydantic's JSON schema uses `$ref`, `anyOf` with null, `title` and `const`, none of which a
structural schema may contain; this module inlines and rewrites them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from mlkube.api.batchprediction import BatchPredictionSpec, BatchPredictionStatus
from mlkube.api.common import GROUP, TEMPLATE, VERSION, ApiModel, JsonDict, cel
from mlkube.api.deployment import DeploymentSpec, DeploymentStatus
from mlkube.api.driftmonitor import DriftMonitorSpec, DriftMonitorStatus
from mlkube.api.modelversion import ModelVersionSpec, ModelVersionStatus
from mlkube.api.trainingjob import TrainingJobSpec, TrainingJobStatus

JsonSchema = dict[str, Any]

_DROPPED_KEYS = {"title", "$defs"}
RULES = "x-kubernetes-validations"


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: list[str]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: list[dict[str, Any]] = field(default_factory=list)
    name_rules: list[JsonDict] = field(default_factory=list)
    """CEL rules on metadata.name beyond the 63-character limit every kind has."""

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _condition(type_: str) -> str:
    return f'.status.conditions[?(@.type=="{type_}")].status'


NAME_FITS_A_LABEL = cel(
    "self.metadata.name.size() <= 63",
    "metadata.name must be at most 63 characters: it is a label value on every child",
)
AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

KINDS: list[Kind] = [
    Kind(
        kind="TrainingJob",
        plural="trainingjobs",
        short_names=["mltj"],
        spec=TrainingJobSpec,
        status=TrainingJobStatus,
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Version", "type": "string", "jsonPath": ".status.modelVersion"},
            {"name": "Trials", "type": "string", "jsonPath": ".status.search.progress"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress", "priority": 1},
            AGE,
        ],
    ),
    Kind(
        kind="ModelVersion",
        plural="modelversions",
        short_names=["mlmv"],
        spec=ModelVersionSpec,
        status=ModelVersionStatus,
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
            {"name": "Version", "type": "integer", "jsonPath": ".spec.version"},
            {"name": "Ready", "type": "string", "jsonPath": _condition("Ready")},
            {"name": "Approved", "type": "boolean", "jsonPath": ".status.approved"},
            {"name": "Role", "type": "string", "jsonPath": ".status.role"},
            {"name": "Stage", "type": "string", "jsonPath": ".spec.stage"},
            {
                "name": "SHA256",
                "type": "string",
                "jsonPath": ".spec.artifact.sha256",
                "priority": 1,
            },
            AGE,
        ],
    ),
    Kind(
        kind="Deployment",
        plural="deployments",
        short_names=["mld"],
        spec=DeploymentSpec,
        status=DeploymentStatus,
        columns=[
            {"name": "Ready", "type": "string", "jsonPath": _condition("Ready")},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion"},
            {"name": "Canary", "type": "string", "jsonPath": ".status.canaryVersion"},
            {"name": "Weight", "type": "integer", "jsonPath": ".status.canaryWeight"},
            {"name": "Step", "type": "integer", "jsonPath": ".status.currentStep"},
            AGE,
        ],
        name_rules=[
            cel(
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "metadata.name must start with a letter: it names the Deployment's Service",
            )
        ],
    ),
    Kind(
        kind="DriftMonitor",
        plural="driftmonitors",
        short_names=["mldm"],
        spec=DriftMonitorSpec,
        status=DriftMonitorStatus,
        columns=[
            {"name": "Deployment", "type": "string", "jsonPath": ".spec.deployment"},
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
            {"name": "Verdict", "type": "string", "jsonPath": ".status.lastRun.verdict"},
            {"name": "Drift", "type": "string", "jsonPath": ".status.lastRun.driftShare"},
            {"name": "Quality", "type": "string", "jsonPath": ".status.performance.verdict"},
            {"name": "Live", "type": "string", "jsonPath": ".status.performance.value"},
            {"name": "Last Run", "type": "date", "jsonPath": ".status.lastRun.at"},
            AGE,
        ],
    ),
    Kind(
        kind="BatchPrediction",
        plural="batchpredictions",
        short_names=["mlbp"],
        spec=BatchPredictionSpec,
        status=BatchPredictionStatus,
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Model", "type": "string", "jsonPath": ".status.modelVersion"},
            {"name": "Shards", "type": "integer", "jsonPath": ".status.shards.total"},
            {"name": "Done", "type": "integer", "jsonPath": ".status.shards.succeeded"},
            {"name": "Failed", "type": "integer", "jsonPath": ".status.shards.failed"},
            {"name": "Rows", "type": "integer", "jsonPath": ".status.rowsScored"},
            {"name": "Output", "type": "string", "jsonPath": ".spec.output.uri", "priority": 1},
            AGE,
        ],
    ),
]


class _FactoryDefaults(GenerateJsonSchema):
    """Put nested objects' defaults in the schema, so the API server fills them in."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        return value.to_api() if isinstance(value, ApiModel) else NoDefault


BY_KIND: dict[str, Kind] = {kind.kind: kind for kind in KINDS}


def structural_schema(model: type[BaseModel]) -> JsonSchema:
    """The model's JSON schema rewritten as a Kubernetes structural schema."""
    raw = model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_FactoryDefaults
    )
    defs: dict[str, JsonSchema] = raw.get("$defs", {})
    return _rewrite(raw, defs)


def _resolve(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    ref: str = node["$ref"]
    target = defs[ref.rsplit("/", 1)[-1]]
    return _merged(target, {k: v for k, v in node.items() if k != "$ref"})


def _merged(model: JsonSchema, field: JsonSchema) -> JsonSchema:
    """A field's schema over its model's. The field's own rules (immutable) come beside the
    model's rules, never instead of them (for `X | None` fields too)."""
    merged = {**model, **field}
    rules = [*model.get(RULES, []), *field.get(RULES, [])]
    if rules:
        merged[RULES] = rules
    return merged


def _without_transition_rules(node: Any) -> Any:
    """`node` with every rule reading `oldSelf` left out, at any depth (see `TEMPLATE`)."""
    if isinstance(node, list):
        return [_without_transition_rules(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _without_transition_rules(value) for key, value in node.items()}
    if RULES in out:
        kept = [rule for rule in out[RULES] if "oldSelf" not in rule["rule"]]
        if kept:
            out[RULES] = kept
        else:
            del out[RULES]
    return out


def _rewrite(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    if "$ref" in node:
        node = _resolve(node, defs)
    if "anyOf" in node:
        node = _collapse_any_of(node, defs)
    if node.get(TEMPLATE):
        rest = {key: value for key, value in node.items() if key != TEMPLATE}
        return dict(_without_transition_rules(_rewrite(rest, defs)))
    if "const" in node:
        node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
    out: JsonSchema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _rewrite(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _rewrite(value, defs)
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out[key] = _rewrite(value, defs)
        else:
            out[key] = value
    if out.get("default") is None:
        out.pop("default", None)
    if "x-kubernetes-int-or-string" not in out and "type" not in out:
        # Any value at all (dict[str, Any] values, for example).
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _collapse_any_of(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    """`X | None` becomes X (absent means None); `int | str` becomes int-or-string."""
    variants = [v for v in node["anyOf"] if v.get("type") != "null"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    types = sorted(v.get("type", "") for v in variants)
    if types == ["integer", "string"]:
        return {**rest, "x-kubernetes-int-or-string": True}
    if len(variants) != 1:
        raise ValueError(f"cannot express anyOf {node['anyOf']} as a structural schema")
    only = variants[0]
    if "$ref" in only:
        only = _resolve(only, defs)
    return _merged(only, rest)


def crd(kind: Kind) -> JsonSchema:
    """The CustomResourceDefinition object for one kind."""
    schema: JsonSchema = {
        "type": "object",
        "required": ["spec"],
        "x-kubernetes-validations": [NAME_FITS_A_LABEL, *kind.name_rules],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural_schema(kind.spec),
            "status": structural_schema(kind.status),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": kind.short_names,
                "categories": ["mlkube"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def all_crds() -> dict[str, JsonSchema]:
    """File name -> CRD, for `crds/` and the Helm chart."""
    return {f"{kind.crd_name}.yaml": crd(kind) for kind in KINDS}


CHART_CRD_GUARD = "{{- if .Values.crds.enabled }}\n"
CHART_CRD_END = "{{- end }}\n"


def crd_yaml(document: JsonSchema) -> str:
    return str(yaml.safe_dump(document, sort_keys=False, width=100))


def chart_crd_yaml(document: JsonSchema) -> str:
    """The chart's copy: installed only with crds.enabled, and kept on `helm uninstall`."""
    kept = {
        **document,
        "metadata": {
            **document["metadata"],
            "annotations": {"helm.sh/resource-policy": "keep"},
        },
    }
    return CHART_CRD_GUARD + crd_yaml(kept) + CHART_CRD_END


def rendered_files() -> dict[Path, str]:
    """Every generated file, relative to the repository root."""
    files: dict[Path, str] = {}
    for name, document in all_crds().items():
        files[Path("crds") / name] = crd_yaml(document)
        files[Path("charts/mlkube/templates/crds") / name] = chart_crd_yaml(document)
    return files


def main() -> None:
    """`make crds`: write crds/ and the chart's CRDs from the models."""
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path()
    for path, text in rendered_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
