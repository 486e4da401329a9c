"""The operator's RBAC is exactly what its code calls: the chart's rules (cluster-wide, and the
Roles of a namespaced install) are compared with the rights found by reading the controller
package (every `Cluster` call, every kopf watch), so a right added without a call, or a call added
without a right, fails here instead of on a cluster.

To extend: a new `Cluster` method goes in CALLS; a right no request carries (an admission check)
goes in ADMISSION with its reason; a resource used only in the operator's own namespace (its
Lease) goes in OWN_NAMESPACE, and is then expected from a Role bound there. Roles are found by
their bindings to the operator's service account, whatever they are called.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kopf
import pytest
import yaml

import mlkube.controller
import mlkube.controller.main  # registers the kopf watches
from mlkube.api.common import GROUP
from mlkube.api.crdgen import KINDS, Kind
from mlkube.controller import kube
from tests.cluster.fixtures import REPO_ROOT
from tests.e2e.conftest import bin_dir

Right = tuple[str, str, str]
"""(apiGroup, resource, verb)"""
CONTROLLER = Path(mlkube.controller.__file__).parent

# How each Cluster method reaches the API server. "kind" methods take (apiVersion, kind) first;
# "custom" methods take an mlkube Kind; "manifest" methods take a whole object; the rest name
# their resource here.
CALLS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "get": ("kind", ("get",), ""),
    "list_of": ("kind", ("list",), ""),
    "list_at": ("kind", ("list",), ""),
    "patch": ("kind", ("patch",), ""),
    "delete": ("kind", ("delete",), ""),
    "create": ("manifest", ("create",), ""),
    # server-side apply creates what is missing: the API server checks create as well as patch
    "apply": ("manifest", ("create", "patch"), ""),
    "replace": ("manifest", ("update",), ""),
    "get_object": ("custom", ("get",), ""),
    "list_objects": ("custom", ("list",), ""),
    "patch_object": ("custom", ("patch",), ""),
    "patch_status": ("custom", ("patch",), "/status"),
    "create_custom": ("custom", ("create",), ""),
    "post_event": ("fixed", ("create",), "events"),
    "scrape": ("fixed", ("get",), "pods/proxy"),
    "pod_logs": ("fixed", ("list",), "pods"),  # and get pods/log: the CLI's, never the operator's
    "request": ("path", (), ""),
    "server_version": ("fixed", (), ""),  # /version: open to every authenticated user
}
FORWARDERS = {("ctx", "apply"): "apply", ("ctx", "create_job"): "create"}
"""Context methods that pass a caller's manifest straight to a Cluster method: their callers are
read instead (the forwarding call itself names no kind)."""
RELISTS = {("main.py", "relist")}
"""Functions that list again what kopf watches (after its watch expired): the list right every
kopf watch adds below covers them."""
ADMISSION: set[Right] = {
    # the chart's ValidatingAdmissionPolicy: a TrainingJob with AutoApproveOnGates registers its
    # ModelVersion approved, and setting spec.approval takes the approve verb, for us too
    (GROUP, "modelversions", "approve"),
}
KOPF_ALWAYS: set[Right] = {
    # kopf notices CRDs appearing and going (list, then watch); it posts its own v1 Events
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "events", "create"),
}
KOPF_PATTERNS: set[Right] = {("", "namespaces", "list"), ("", "namespaces", "watch")}
"""Only when watching namespace patterns: kopf lists namespaces to match them."""
OWN_NAMESPACE = {"leases"}
"""Rights the operator needs in its own (the release's) namespace only: leader election."""
RELEASE = "mlkube-system"
CLUSTER_SCOPED = {
    "customresourcedefinitions",
    "namespaces",
    "tokenreviews",
    "subjectaccessreviews",
}
METHODS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete", "GET": "get"}


def _resource(api_version: str, kind_name: str) -> tuple[str, str]:
    group = api_version.rpartition("/")[0]
    return group, kube._PLURALS[(api_version, kind_name)]


class Scan:
    """Rights of one controller module, read from its syntax tree."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.source = Path(str(module.__file__))
        self.rights: set[Right] = set()

    def fail(self, node: ast.AST, why: str) -> None:
        line = getattr(node, "lineno", 0)
        pytest.fail(f"{self.source.name}:{line}: {why}: {ast.unparse(node)}", pytrace=False)

    def value(self, node: ast.expr, module: ModuleType | None = None) -> Any:
        """A constant expression of the module's (names resolved in its globals)."""
        where = module or self.module
        return eval(compile(ast.Expression(node), str(self.source), "eval"), vars(where))

    def kinds_of(self, node: ast.expr) -> list[Kind]:
        try:
            return [self.value(node)]
        except NameError:  # BY_KIND[kind]: any of ours
            return list(KINDS)

    def kind_args(self, args: list[ast.expr]) -> tuple[str, str]:
        """(group, resource) of a call taking (apiVersion, kind, ...) or (*KIND, ...)."""
        first = args[0]
        if isinstance(first, ast.Starred):
            api_version, kind = self.value(first.value)
        else:
            api_version, kind = self.value(first), self.value(args[1])
        return _resource(api_version, kind)

    def manifests(self, node: ast.expr, scope: ast.AST, module: ModuleType) -> set[tuple[str, str]]:
        """(group, resource) of every object `node` (in `module`) can evaluate to."""
        if isinstance(node, ast.Dict):
            keys = [k.value if isinstance(k, ast.Constant) else None for k in node.keys]
            fields = dict(zip(keys, node.values, strict=True))
            if {"apiVersion", "kind", "metadata"} <= fields.keys():
                with contextlib.suppress(NameError, AttributeError):
                    api_version = self.value(fields["apiVersion"], module)
                    kind = self.value(fields["kind"], module)
                    return {_resource(api_version, kind)}
            return set()
        if isinstance(node, ast.IfExp):
            return self.manifests(node.body, scope, module) | self.manifests(
                node.orelse, scope, module
            )
        if isinstance(node, ast.Constant) and node.value is None:
            return set()
        found: set[tuple[str, str]] = set()
        if isinstance(node, ast.Name):  # the assignments to it in the calling function
            for assign in ast.walk(scope):
                if isinstance(assign, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == node.id for t in assign.targets
                ):
                    found |= self.manifests(assign.value, scope, module)
        elif isinstance(node, ast.Call):  # a builder: the manifests its source spells out
            with contextlib.suppress(NameError, TypeError, OSError):
                builder = self.value(node.func, module)
                built = ast.parse(textwrap.dedent(inspect.getsource(builder)))
                home = inspect.getmodule(builder) or module
                for d in ast.walk(built):
                    if isinstance(d, ast.Dict):
                        found |= self.manifests(d, built, home)
        if not found:
            self.fail(node, "cannot tell which kind of object this is")
        return found

    def call(self, method: str, node: ast.Call | None, ref: ast.AST, scope: ast.AST) -> None:
        how, verbs, extra = CALLS[method]
        targets: set[tuple[str, str]] = set()
        if how == "fixed":
            targets = {("", extra)} if extra else set()
            extra = ""
        elif node is None:
            self.fail(ref, f"Cluster.{method} passed on uncalled: its kind cannot be read")
        elif how == "kind":
            targets = {self.kind_args(node.args)}
        elif how == "custom":
            targets = {(GROUP, k.plural) for k in self.kinds_of(node.args[0])}
        elif how == "manifest":
            targets = self.manifests(node.args[0], scope, self.module)
        else:  # request(method, path, ...): a constant path, or resource_path(kind...)
            http, path = self.value(node.args[0]), node.args[1]
            verbs = (METHODS[http],)
            if isinstance(path, ast.Call) and ast.unparse(path.func) == "resource_path":
                targets = {self.kind_args(path.args)}
                at = 3 if isinstance(path.args[0], ast.Starred) else 4  # the subresource
                extra = "/" + self.value(path.args[at]) if len(path.args) > at else ""
            else:
                parts = str(self.value(path)).strip("/").split("/")
                targets = {("" if parts[0] == "api" else parts[1], parts[-1])}
        self.rights |= {(g, r + extra, v) for g, r in targets for v in verbs}

    def run(self) -> set[Right]:
        tree = ast.parse(self.source.read_text())
        scopes: dict[ast.AST, ast.AST] = {}
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for child in ast.walk(fn):
                    scopes.setdefault(child, fn)
        # the forwarding method itself passes on its caller's manifest
        forwarders = {name for _, name in FORWARDERS} if self.source.name == "context.py" else set()
        forwarders |= {fn for module, fn in RELISTS if module == self.source.name}
        called = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            receiver = ast.unparse(node.value).rpartition(".")[2]
            method = FORWARDERS.get((receiver, node.attr)) or (
                node.attr if receiver == "kube" and node.attr in CALLS else None
            )
            scope = scopes.get(node, tree)
            if method is None or (isinstance(scope, ast.FunctionDef) and scope.name in forwarders):
                continue
            self.call(method, called.get(id(node)), node, scope)
        return self.rights


def controller_modules() -> Iterator[ModuleType]:
    for path in sorted(CONTROLLER.glob("*.py")):
        if path.stem not in ("kube", "__init__"):
            yield importlib.import_module(f"mlkube.controller.{path.stem}")


def code_rights(patterns: bool) -> set[Right]:
    """What the operator's code needs; `patterns`: watching namespace patterns, not all."""
    rights = set(ADMISSION) | KOPF_ALWAYS | (KOPF_PATTERNS if patterns else set())
    for module in controller_modules():
        rights |= Scan(module).run()
    for handler in kopf.get_default_registry()._watching.get_all_handlers():
        selector = handler.selector
        assert selector is not None
        plural = selector.plural or selector.any_name
        assert selector.group is not None and isinstance(plural, str)
        rights |= {(selector.group, plural, "list"), (selector.group, plural, "watch")}
    return rights


def rendered(*values: str, release: str = "mlkube") -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(bin_dir() / "helm"), "template", release, "charts/mlkube", *values],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def granted(docs: list[dict[str, Any]], namespace: str | None) -> set[Right]:
    """The rules bound to the operator's service account among `docs`, flattened: cluster-wide
    (namespace None: ClusterRoleBindings) or in `namespace` (its RoleBindings), whatever the
    roles are called."""
    by_ref = {
        (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): d["rules"]
        for d in docs
        if d["kind"] in ("ClusterRole", "Role")
    }
    rights: set[Right] = set()
    for doc in docs:
        meta = doc["metadata"]
        wanted = "ClusterRoleBinding" if namespace is None else "RoleBinding"
        if doc["kind"] != wanted or meta.get("namespace") != namespace:
            continue
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == "mlkube-operator"
            for s in doc["subjects"]
        ):
            continue
        ref = doc["roleRef"]
        role_namespace = namespace if ref["kind"] == "Role" else None
        for rule in by_ref[(ref["kind"], ref["name"], role_namespace)]:
            # resourceNames (the Lease's own name) narrow a right further: the verb is still used
            rights |= {
                (g, r, v)
                for g in rule["apiGroups"]
                for r in rule["resources"]
                for v in rule["verbs"]
            }
    return rights


def split(rights: set[Right]) -> tuple[set[Right], set[Right], set[Right]]:
    """(cluster-scoped, the operator's own namespace, workload namespaces)."""
    cluster = {r for r in rights if r[1] in CLUSTER_SCOPED}
    own = {r for r in rights if r[1] in OWN_NAMESPACE}
    return cluster, own, rights - cluster - own


def test_every_cluster_method_is_classified() -> None:
    """A new method must say how it reaches the API server, or the scan would not see it."""
    public: Callable[[Any], bool] = inspect.isfunction
    methods = {n for n, _ in inspect.getmembers(kube.Cluster, public) if not n.startswith("_")}
    assert methods == set(CALLS)


def test_the_cluster_role_is_exactly_what_the_code_calls() -> None:
    docs = rendered("--namespace", RELEASE)
    cluster, own, namespaced = split(code_rights(patterns=False))
    assert granted(docs, None) == cluster | namespaced
    assert granted(docs, RELEASE) == own


def test_namespace_patterns_add_only_the_namespace_listing() -> None:
    docs = rendered("--namespace", RELEASE, "--set", "watchNamespaces={team-*}")
    cluster, own, namespaced = split(code_rights(patterns=True))
    assert granted(docs, None) == cluster | namespaced
    assert granted(docs, RELEASE) == own


def test_named_namespaces_get_roles_and_no_cluster_wide_workload_rights() -> None:
    docs = rendered("--namespace", RELEASE, "--set", "watchNamespaces={team-a,team-b}")
    cluster, own, namespaced = split(code_rights(patterns=False))
    assert granted(docs, None) == cluster
    assert granted(docs, RELEASE) == own
    for namespace in ("team-a", "team-b"):
        assert granted(docs, namespace) == namespaced


def test_the_lease_rights_name_the_one_lease_of_the_watched_scope() -> None:
    """get and update only that Lease (a create names no object RBAC could check)."""
    docs = rendered("--namespace", RELEASE)
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == RELEASE]
    named = {(v, *rule.get("resourceNames", [])) for rule in role["rules"] for v in rule["verbs"]}
    assert named == {("create",), ("get", "mlkube-operator"), ("update", "mlkube-operator")}
