"""MLflow's registry in step with the cluster: a Deployment's stable version holds its champion
alias there, its canary its challenger (MLflow 2.9+ aliases; the names `core.history` gives a
ModelVersion's status.aliases), for each version registered in MLflow (lineage.mlflow).

MLflow's aliases are unique per registered model, and one model may be served by several
Deployments, in several namespaces sharing one registry, so an alias carries both:
`champion_<namespace>_<deployment>`. `_` is in no Kubernetes name, so two (namespace, Deployment)
pairs never make one alias, and only that Deployment's reconciler writes its two names: one
writer per alias, no race between Deployments, no namespace moving another's.

A sync is one Job per registered model (`builders.tracking.build_alias_job`) that converges this
Deployment's two names there: it sets those wanted and deletes the other, so a Job cut short or
failed leaves nothing the next one does not fix. status.mlflowAliases holds what the last
successful Job set; a registered model whose wanted aliases differ from it gets the next Job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from mlkube.api.common import Condition, ConditionStatus
from mlkube.api.deployment import MLFLOW_ALIASES_LIMIT, DeploymentStatus, MlflowAlias
from mlkube.api.modelversion import AliasName, MlflowRun, ServingRole
from mlkube.core.history import ALIASES

ALIASES_SYNCED = "AliasesSynced"
"""Deployment condition: MLflow's registry holds the aliases status.mlflowAliases lists."""
SYNC_FAILED = "AliasSyncFailed"
"""Reason of a sync Job that ended without saying why (its deadline, a killed pod)."""

Registry = tuple[str, str]
"""(trackingUri, registeredModel): where one Job converges this Deployment's aliases."""


def alias_name(alias: AliasName, namespace: str, deployment: str) -> str:
    """The alias in MLflow, e.g. `champion_team-a_iris` (MLflow allows letters, digits, `_`
    and `-`, up to 255 characters: 10 + 63 + 63 here)."""
    return f"{alias}_{namespace}_{deployment}"


def wanted(
    namespace: str, deployment: str, status: DeploymentStatus, runs: Mapping[str, MlflowRun]
) -> list[MlflowAlias]:
    """The aliases the Deployment's stable and canary versions should hold; `runs` is the
    lineage.mlflow of ModelVersions by name. A version with no registered version in MLflow (not
    tracked, or its ModelVersion gone) holds none."""
    found = []
    roles: tuple[tuple[ServingRole, str | None], ...] = (
        ("Stable", status.stable_version),
        ("Canary", status.canary_version),
    )
    for role, version in roles:
        run = runs.get(version or "")
        if run is None or not run.registered_model or not run.registered_version:
            continue
        found.append(
            MlflowAlias(
                tracking_uri=run.tracking_uri,
                registered_model=run.registered_model,
                alias=alias_name(ALIASES[role], namespace, deployment),
                version=run.registered_version,
                credentials_secret=run.credentials_secret,
            )
        )
    return found


@dataclass(frozen=True)
class AliasSync:
    """One Job's work: in `registered_model` at `tracking_uri`, set `set` (alias -> version) and
    delete `delete`, with the credentials of `credentials_secret`; `synced` is
    status.mlflowAliases once it succeeded."""

    tracking_uri: str
    registered_model: str
    credentials_secret: str | None
    set: dict[str, str]
    delete: list[str]
    synced: list[MlflowAlias]

    def digest(self) -> str:
        """Names the work (the Job's annotation): a Job doing other work is replaced."""
        work = [self.tracking_uri, self.registered_model, self.credentials_secret]
        text = json.dumps([*work, sorted(self.set.items()), sorted(self.delete)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        sets = [f"{alias}={version}" for alias, version in sorted(self.set.items())]
        what = ", ".join([*sets, *(f"deleting {alias}" for alias in self.delete)])
        return f"{what} in {self.registered_model} at {self.tracking_uri}"


def next_sync(
    namespace: str, deployment: str, want: list[MlflowAlias], synced: list[MlflowAlias]
) -> AliasSync | None:
    """The next Job to run, None when MLflow holds what `want` says (as last `synced`).

    Registered models whose versions serve go first, then those only to clean up (the
    Deployment's versions moved to another registered model), so a registry that refuses a clean
    up never holds back what serves. Only the alias and version are compared: a credentials
    Secret renamed alone needs no Job."""
    wanted_in: dict[Registry, list[MlflowAlias]] = {}
    synced_in: dict[Registry, list[MlflowAlias]] = {}
    for entries, into in ((want, wanted_in), (synced, synced_in)):
        for entry in entries:
            into.setdefault((entry.tracking_uri, entry.registered_model), []).append(entry)
    for registry in [*sorted(wanted_in), *sorted(synced_in.keys() - wanted_in.keys())]:
        wants, had = wanted_in.get(registry, []), synced_in.get(registry, [])
        setting = {entry.alias: entry.version for entry in wants}
        if setting == {entry.alias: entry.version for entry in had}:
            continue
        names = [alias_name(alias, namespace, deployment) for alias in ALIASES.values()]
        others = [e for e in synced if (e.tracking_uri, e.registered_model) != registry]
        return AliasSync(
            tracking_uri=registry[0],
            registered_model=registry[1],
            credentials_secret=(wants or had)[0].credentials_secret,
            set=setting,
            delete=[name for name in names if name not in setting],
            # bounded: clean-ups refused over and over are forgotten first
            synced=[*wants, *others][:MLFLOW_ALIASES_LIMIT],
        )
    return None


def synced_condition(
    sync: AliasSync | None,
    synced: list[MlflowAlias],
    failure: tuple[str, str] | None,
    previous: Condition | None,
) -> tuple[ConditionStatus, str, str] | None:
    """AliasesSynced as (status, reason, message), None while the Deployment never had an alias
    to hold. `sync` is the pending work (None: in step), `failure` why its Job failed or cannot
    run (reason, message). A Job retrying the same work after a failure keeps the failure's
    condition, so the condition does not flap with each try."""
    if sync is None:
        if not synced and previous is None:
            return None
        held = [f"models:/{e.registered_model}@{e.alias} is {e.version}" for e in synced]
        return "True", "Synced", "; ".join(held) or "no version here is registered in MLflow"
    if failure is not None:
        return "False", failure[0], f"{sync.describe()}: {failure[1]}"
    retrying = previous is not None and previous.message.startswith(f"{sync.describe()}: ")
    if previous is not None and previous.status == "False" and retrying:
        return previous.status, previous.reason, previous.message
    return "Unknown", "Syncing", sync.describe()
