"""`mlkube` (also `kubectl mlkube`): look at and steer the mlkube kinds.

Actions on a Deployment (promote, abort, retry, rollback) are annotations the operator carries out;
the CLI never edits a Deployment's spec, so it is safe on objects a GitOps tool owns.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mlkube import __version__
from mlkube.api.common import GROUP
from mlkube.api.crdgen import BY_KIND, KINDS, Kind
from mlkube.contract import TRAININGJOB_LABEL
from mlkube.core.actions import ACTION_ANNOTATION, action_value, managed_by_gitops
from mlkube.core.canary import Action
from mlkube.core.conditions import timestamp
from mlkube.core.history import ALIASES
from mlkube.core.search import as_trial, trial_records
from mlkube.runtime.search import rank

if TYPE_CHECKING:
    from mlkube.controller.errors import ApiError
    from mlkube.controller.kube import Cluster

MODEL_VERSION_NAMES = {"modelversion", "modelversions", "mlmv", f"modelversions.{GROUP}"}
DEPLOYMENT_NAMES = {"deployment", "deployments", "mld", f"deployments.{GROUP}"}
_PART = re.compile(r"[^.\[]+(?:\[[^\]]*\])?")
_FILTER = re.compile(r'^(?P<list>\w+)\[\?\(@\.(?P<key>\w+)=="(?P<value>[^"]*)"\)\]$')


def json_path(obj: Any, path: str) -> Any:
    """The subset of kubectl's JSONPath that printer columns use: `.a.b` and `list[?(@.k=="v")]`."""
    node = obj
    for part in _PART.findall(path):
        match = _FILTER.match(part)
        if match:
            items = (node or {}).get(match["list"]) or []
            node = next((i for i in items if str(i.get(match["key"])) == match["value"]), None)
        else:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def age(created: str | None, now: datetime) -> str:
    if not created:
        return ""
    seconds = int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def rows_for(
    kind: Kind, items: list[dict[str, Any]], now: datetime, all_namespaces: bool
) -> list[list[str]]:
    """One row per object, with the CRD's own printer columns (priority 0)."""
    columns = [c for c in kind.columns if not c.get("priority")]
    rows = []
    for item in items:
        meta = item.get("metadata", {})
        row = [meta.get("namespace", "")] if all_namespaces else []
        row.append(meta.get("name", ""))
        for column in columns:
            value = json_path(item, column["jsonPath"])
            row.append(
                age(value, now) if column["type"] == "date" else "" if value is None else str(value)
            )
        rows.append(row)
    return rows


def headers_for(kind: Kind, all_namespaces: bool) -> list[str]:
    names = [c["name"].upper() for c in kind.columns if not c.get("priority")]
    return (["NAMESPACE"] if all_namespaces else []) + ["NAME", *names]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [headers, *rows]
    )


BAR_WIDTH = 30


def progress_bar(done: int, failed: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[####x.....]``: done (#), failed (x) and left (.) in proportion, never an empty share
    rounded away (one failed shard of 1,000 still shows)."""
    if total <= 0:
        return f"[{'.' * width}]"
    bad = max(1, round(width * failed / total)) if failed else 0
    good = min(width - bad, round(width * done / total))
    return f"[{'#' * good}{'x' * bad}{'.' * (width - good - bad)}]"


def batch_progress(prediction: dict[str, Any], detail: bool = False) -> str:
    """A BatchPrediction's run as a bar of its shards, the rows scored and, with `detail`, the
    failed shards and its conditions."""
    name = (prediction.get("metadata") or {}).get("name", "")
    status = prediction.get("status") or {}
    shards = status.get("shards") or {}
    total, done, failed = (int(shards.get(k) or 0) for k in ("total", "succeeded", "failed"))
    line = f"{name} {progress_bar(done, failed, total)} {done}/{total} shards"
    if failed:
        line += f", {failed} failed"
    if status.get("rows") is not None:
        line += f", {int(status.get('rowsScored') or 0):,}/{int(status['rows']):,} rows"
    line += f"   {status.get('phase') or 'Pending'} ({status.get('modelVersion') or '-'})"
    if not detail:
        return line
    lines = [line]
    lines += [
        f"  shard {f['shard']}: {f['reason']}: {f.get('message', '')}"
        for f in status.get("failedShards") or []
    ]
    if status.get("manifestUri"):
        lines.append(f"  manifest {status['manifestUri']}")
    for condition in status.get("conditions", []):
        lines.append(
            f"{condition['type']}={condition['status']} {condition['reason']}: "
            f"{condition.get('message', '')}"
        )
    return "\n".join(lines)


def search_progress(trainingjob: dict[str, Any]) -> str | None:
    """A TrainingJob's search as a bar of its trials and the best so far; None without one."""
    status = trainingjob.get("status") or {}
    search = status.get("search")
    if not search:
        return None
    name = (trainingjob.get("metadata") or {}).get("name", "")
    total, done, failed = (int(search.get(k) or 0) for k in ("total", "done", "failed"))
    line = f"{name} {progress_bar(done - failed, failed, total)} {done}/{total} trials"
    if failed:
        line += f", {failed} failed"
    best = search.get("winner") or next(
        (t for t in search.get("top") or [] if t.get("status") == "Succeeded"), None
    )
    if best:
        which = "winner" if search.get("winner") else "best so far"
        line += f"   {which}: trial {best['index']} {search.get('metric')} {best.get('value')}"
    return f"{line}   {status.get('phase') or 'Pending'}"


def trials_table(trainingjob: dict[str, Any], records: list[dict[str, Any]] | None = None) -> str:
    """The trials, best first by the search's metric: every trial the trial pods still report
    (`records`), else the top trials status keeps. The winner is marked with *."""
    search = (trainingjob.get("status") or {}).get("search") or {}
    metric = str(search.get("metric") or "value")
    trials = (
        [as_trial(r).to_api() for r in rank(records, metric)]
        if records
        else list(search.get("top") or [])
    )
    winner = (search.get("winner") or {}).get("index")
    headers = ["RANK", "TRIAL", "STATUS", metric.upper(), "FIT S", "PARAMETERS", "POD / REASON"]
    rows = []
    for rank_, t in enumerate(trials, start=1):
        parameters = " ".join(f"{k}={v}" for k, v in sorted((t.get("parameters") or {}).items()))
        where = t.get("pod") or ""
        if t.get("status") == "Failed":
            where = f"{t.get('reason', '')}: {str(t.get('message', ''))[:60]}"
        mark = "*" if t["index"] == winner else ""
        rows.append([f"{rank_}{mark}", str(t["index"]), str(t.get("status")),
                     str(t.get("value") or "-"), str(t.get("fitSeconds") or "-"),
                     parameters, where])  # fmt: skip
    return table(headers, rows)


def _trials(cluster: Cluster, args: argparse.Namespace) -> int:
    trainingjob = cluster.get_object(BY_KIND["TrainingJob"], args.namespace, args.name)
    if trainingjob is None:
        print(f"trainingjob.{GROUP}/{args.name} not found in {args.namespace}", file=sys.stderr)
        return 1
    search = (trainingjob.get("status") or {}).get("search")
    if not search:
        print(f"trainingjob.{GROUP}/{args.name} has no search (spec.search)", file=sys.stderr)
        return 1
    pods = cluster.list_of("v1", "Pod", args.namespace, f"job-name={args.name}-trials")
    print(search_progress(trainingjob))
    print(trials_table(trainingjob, trial_records(pods)))
    if search.get("trialsUri"):
        print(f"every trial's record: {search['trialsUri']}")
    return 0


def canary_progress(deployment: dict[str, Any]) -> str:
    """The rollout as a picture: each step, where the canary is, and its weight as a bar."""
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    steps = ((spec.get("strategy") or {}).get("canary") or {}).get("steps") or []
    current = status.get("currentStep")
    weight = status.get("canaryWeight") or 0
    lines = [
        f"stable {status.get('stableVersion') or '-'}   canary {status.get('canaryVersion') or '-'}   "
        f"phase {status.get('phase') or '-'}",
        f"weight [{'#' * (weight // 5)}{'.' * (20 - weight // 5)}] {weight}%",
    ]
    for index, step in enumerate(steps):
        marker = (
            ">"
            if current == index and status.get("canaryVersion")
            else "x"
            if current is not None and index < current
            else " "
        )
        if "setWeight" in step:
            what = f"setWeight {step['setWeight']}"
        elif "pause" in step:
            seconds = (step["pause"] or {}).get("seconds")
            what = f"pause {seconds}s" if seconds is not None else "pause until `mlkube promote`"
        else:
            what = "analysis"
        lines.append(f" {marker} {index}: {what}")
    last = status.get("lastAnalysis")
    if last:
        lines.append(
            f"last analysis: {last.get('result')} ({last.get('requests')} requests, errors "
            f"{last.get('errorRatePercent')}%, p95 {last.get('p95LatencyMs')} ms, shift "
            f"{last.get('predictionShift')}) {last.get('message', '')}"
        )
    for condition in status.get("conditions", []):
        lines.append(
            f"{condition['type']}={condition['status']} {condition['reason']}: {condition.get('message', '')}"
        )
    return "\n".join(lines)


def live_quality(monitor: dict[str, Any]) -> str | None:
    """A DriftMonitor's last live-quality figures, realised beside estimated, in one block."""
    perf = (monitor.get("status") or {}).get("performance")
    if not perf:
        return None
    name = (monitor.get("metadata") or {}).get("name", "")
    figures = [f"{perf.get('metric') or '-'} {perf.get('value') or '-'}"]
    figures += [f"{key} {perf[key]}" for key in ("estimated", "offline") if perf.get(key)]
    lines = [
        f"live quality ({name}, {perf.get('modelVersion') or '-'}): {perf['verdict']}   "
        + "   ".join(figures),
        f"  labelled {perf.get('labelledRows', 0)} of {perf.get('rows', 0)} rows"
        + (f" ({perf['labelledShare']} of those due)" if perf.get("labelledShare") else "")
        + (f", {perf['unknownIds']} labels for unknown ids" if perf.get("unknownIds") else ""),
    ]
    if perf.get("outcomes"):
        lines.append(
            "  outcomes " + ", ".join(f"{k} {v}" for k, v in sorted(perf["outcomes"].items()))
        )
    for cut in perf.get("slices") or []:
        lines.append(f"  slice {cut['value']}: {cut.get('metric') or '-'} ({cut['rows']} rows)")
    if perf.get("worstSliceGap"):
        lines.append(f"  worst slice gap {perf['worstSliceGap']}")
    if perf.get("message"):
        lines.append(f"  {perf['message']}")
    return "\n".join(lines)


def gitops_rollback_hint(deployment: dict[str, Any]) -> str | None:
    """What to change in Git so a rollback sticks, when a GitOps tool owns the spec."""
    tool = managed_by_gitops(deployment.get("metadata", {}))
    previous = (deployment.get("status") or {}).get("previousStableVersion")
    if tool is None or previous is None:
        return None
    return (
        f"{tool} manages this Deployment: the rollback holds until the spec changes. To make it "
        f"permanent, set in Git:\n  spec:\n    modelVersion: {previous}"
    )


def duration(start: str, end: str | None, now: datetime) -> str:
    """How long a span lasted (or has lasted), as `age` writes it."""
    stop = now if end is None else datetime.fromisoformat(end.replace("Z", "+00:00"))
    return age(start, stop)


def history_table(entries: list[dict[str, Any]], now: datetime, deployment: bool = False) -> str:
    """A history, oldest first: each span of a version in a role, from and to (`serving` while
    it lasts), how long, why it began and ended, and who made it so."""
    headers = ["DEPLOYMENT"] if deployment else ["VERSION"]
    headers += ["ROLE", "FROM", "TO", "FOR", "REASON", "BY", "ENDED", "ENDED BY"]
    rows = [
        [
            str(e.get("deployment" if deployment else "version", "")),
            str(e.get("role", "")),
            str(e.get("from", "")),
            str(e.get("to") or "serving"),
            duration(str(e.get("from", "")), e.get("to"), now),
            str(e.get("reason", "")),
            str(e.get("by", "")),
            str(e.get("endReason") or ""),
            str(e.get("endedBy") or ""),
        ]
        for e in entries
    ]
    return table(headers, rows)


def serving_summary(model_version: dict[str, Any]) -> str:
    """Where a ModelVersion serves now, with its aliases: one line."""
    status = model_version.get("status") or {}
    aliases = {(a["deployment"], a["name"]) for a in status.get("aliases") or []}
    places = []
    for serving in status.get("servingIn") or []:
        place = f"{serving['role']} in {serving['deployment']}"
        alias = ALIASES.get(serving["role"])
        if (serving["deployment"], alias) in aliases:
            place += f" ({alias})"
        if serving.get("since"):
            place += f" since {serving['since']}"
        places.append(place)
    name = (model_version.get("metadata") or {}).get("name", "")
    return f"{name}: " + ("; ".join(places) if places else "not serving")


def _history(cluster: Cluster, args: argparse.Namespace) -> int:
    kind_name, _, name = args.name.rpartition("/")
    kind = "ModelVersion" if kind_name.lower() in MODEL_VERSION_NAMES else "Deployment"
    if kind_name and kind_name.lower() not in MODEL_VERSION_NAMES | DEPLOYMENT_NAMES:
        print(f"mlkube history: {kind_name} is neither a Deployment nor a ModelVersion",
              file=sys.stderr)  # fmt: skip
        return 1
    obj = cluster.get_object(BY_KIND[kind], args.namespace, name)
    if obj is None:
        print(f"{kind.lower()}.{GROUP}/{name} not found in {args.namespace}", file=sys.stderr)
        return 1
    entries = (obj.get("status") or {}).get("history") or []
    if kind == "ModelVersion":
        print(serving_summary(obj))
    if not entries:
        print(f"{kind.lower()}.{GROUP}/{name} has no history yet")
        return 0
    print(history_table(entries, datetime.now(UTC), deployment=kind == "ModelVersion"))
    return 0


def _status(cluster: Cluster, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    namespace = None if args.all_namespaces else args.namespace
    if args.name:
        deployment = cluster.get_object(BY_KIND["Deployment"], args.namespace, args.name)
        if deployment is None:
            prediction = cluster.get_object(BY_KIND["BatchPrediction"], args.namespace, args.name)
            if prediction is not None:
                print(batch_progress(prediction, detail=True))
                return 0
            missing = f"no deployment.{GROUP} or batchprediction.{GROUP} {args.name}"
            print(f"{missing} in {args.namespace}", file=sys.stderr)
            return 1
        print(canary_progress(deployment))
        history = (deployment.get("status") or {}).get("history") or []
        if history:
            print(f"history, the last {min(len(history), 3)} of {len(history)} "
                  f"(`mlkube history {args.name}`):")  # fmt: skip
            print(history_table(history[-3:], now))
        for monitor in cluster.list_objects(BY_KIND["DriftMonitor"], args.namespace):
            quality = (
                live_quality(monitor) if monitor["spec"].get("deployment") == args.name else None
            )
            if quality:
                print(quality)
        return 0
    for kind in KINDS:
        items = cluster.list_objects(kind, namespace)
        if items:
            print(f"{kind.kind}s ({kind.plural}.{GROUP})")
            print(
                table(
                    headers_for(kind, args.all_namespaces),
                    rows_for(kind, items, now, args.all_namespaces),
                )
            )
            if kind.kind == "BatchPrediction":
                for item in items:
                    print(batch_progress(item))
            if kind.kind == "TrainingJob":
                for item in items:
                    bar = search_progress(item)
                    if bar:
                        print(bar)
            print()
    return 0


def whoami(cluster: Cluster) -> str:
    """The requesting user's name as the API server sees it (SelfSubjectReview): the approver
    the chart's mlkube-approval policy accepts."""
    review = cluster.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    return str(review["status"]["userInfo"]["username"])


APPROVAL_POLICY_REFUSAL = "may not approve or reject ModelVersion"
"""Part of the message of the chart's mlkube-approval policy (templates/approval.yaml): the
refusal that the verb `approve` is missing, as opposed to RBAC refusing the patch itself."""


def approval_refused(error: ApiError, name: str, namespace: str, user: str) -> str:
    """What to tell a user whose approval the API server refused, and how to get the right."""
    lines = [f"mlkube: cannot record a decision on modelversion {name}: {error.message}"]
    if error.status == 403 and APPROVAL_POLICY_REFUSAL in error.message:
        named = re.search(r"the ClusterRole ([-a-z0-9.]+)", error.message)  # the release's
        role = named.group(1) if named else "mlkube-approver"
        account = user.removeprefix("system:serviceaccount:")
        subject = f"--user={user}" if account == user else f"--serviceaccount={account}"
        lines += [
            f"Approving takes the verb `approve` on modelversions.{GROUP} in {namespace}, which"
            f" {user} lacks (editing ModelVersions is not enough).",
            f"A platform team grants it with a RoleBinding to the ClusterRole {role}:",
            f"  kubectl create rolebinding {user.rpartition(':')[2]}-approves -n {namespace}"
            f" --clusterrole={role} {subject}",
        ]
    elif error.status == 422 and "approval.by" in error.message:
        lines.append(
            f"The approver recorded is the user making the change: drop --by (you: {user})."
        )
    return "\n".join(lines)


def _approve(cluster: Cluster, args: argparse.Namespace) -> int:
    from mlkube.controller.errors import ApiError, Forbidden, Invalid

    try:
        user = whoami(cluster)
    except ApiError:  # an API server older than 1.28: the approver must be named
        user = args.by or ""
    approval = {
        "approved": not args.reject,
        "by": args.by or user,
        "at": timestamp(datetime.now(UTC)),
        **({"reason": args.reason} if args.reason else {}),
    }
    try:
        cluster.patch_object(
            BY_KIND["ModelVersion"], args.namespace, args.name, {"spec": {"approval": approval}}
        )
    except (Forbidden, Invalid) as e:
        print(approval_refused(e, args.name, args.namespace, user), file=sys.stderr)
        return 1
    decision = "rejected" if args.reject else "approved"
    print(f"modelversion {args.name} {decision} by {approval['by']}")
    return 0


def _act(cluster: Cluster, args: argparse.Namespace, verb: Action) -> int:
    kind = BY_KIND["Deployment"]
    deployment = cluster.get_object(kind, args.namespace, args.name)
    if deployment is None:
        print(f"deployment.{GROUP}/{args.name} not found in {args.namespace}", file=sys.stderr)
        return 1
    from mlkube.controller.errors import ApiError

    try:
        user: str | None = whoami(cluster)  # recorded in the Deployment's history as `by`
    except ApiError:  # an API server older than 1.28: the action names nobody
        user = None
    value = action_value(verb, datetime.now(UTC), user)
    patch = {"metadata": {"annotations": {ACTION_ANNOTATION: value}}}
    cluster.patch_object(kind, args.namespace, args.name, patch)
    print(f"deployment.{GROUP}/{args.name}: {verb} requested")
    if verb == "rollback":
        hint = gitops_rollback_hint(deployment)
        if hint:
            print(hint)
    return 0


def _logs(cluster: Cluster, args: argparse.Namespace) -> int:
    logs = cluster.pod_logs(args.namespace, f"{TRAININGJOB_LABEL}={args.name}")
    if not logs:
        print(f"no pods for trainingjob {args.name} in {args.namespace}", file=sys.stderr)
        return 1
    for pod, text in logs.items():
        print(f"==> {pod}")
        print(text)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mlkube", description=__doc__)
    root.add_argument("--kubeconfig")
    root.add_argument("--context")
    root.add_argument(
        "-n", "--namespace", help="default: the kubeconfig context's namespace, as kubectl"
    )
    root.add_argument("-A", "--all-namespaces", action="store_true")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="client and server versions")
    status = commands.add_parser(
        "status", help="all mlkube objects, or one Deployment's rollout or BatchPrediction's run"
    )
    status.add_argument(
        "name", nargs="?", help="a Deployment (mlkube.io), else a BatchPrediction, in detail"
    )
    approve = commands.add_parser("approve", help="approve (or --reject) a ModelVersion")
    approve.add_argument("name")
    approve.add_argument(
        "--by",
        help="the approver to record (default: you, as the API server knows you; where the"
        " chart's approval policy runs it must be you)",
    )
    approve.add_argument("--reason")
    approve.add_argument("--reject", action="store_true")
    for verb, text in (
        ("promote", "finish the current canary step (--full: every step)"),
        ("abort", "roll the canary back; stable keeps serving"),
        ("retry", "roll out a version that was rolled back"),
        ("rollback", "return to the previous stable while it is still warm"),
    ):
        command = commands.add_parser(verb, help=text)
        command.add_argument("name")
        if verb == "promote":
            command.add_argument("--full", action="store_true")
    logs = commands.add_parser("logs", help="a TrainingJob's trainer logs")
    logs.add_argument("name")
    history = commands.add_parser(
        "history", help="what a Deployment served when and why (or a ModelVersion: mlmv/NAME)"
    )
    history.add_argument("name", help="DEPLOYMENT, or modelversion/NAME")
    trials = commands.add_parser(
        "trials", help="a TrainingJob's search: its trials, best first by the search's metric"
    )
    trials.add_argument("name", help="TRAININGJOB")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "version":
        print(f"mlkube {__version__}")
    try:
        from mlkube.controller.kube import (
            Cluster,  # needs the kubernetes client, which `version` does not
        )

        cluster = Cluster(args.kubeconfig, args.context)
    except Exception as e:  # no kubeconfig: say so plainly rather than with a traceback
        if args.command == "version":
            return 0
        print(f"mlkube: cannot reach a cluster: {e}", file=sys.stderr)
        return 1
    if args.namespace is None:
        args.namespace = cluster.namespace
    if args.command == "version":
        print(f"server {cluster.server_version()}")
        return 0
    if args.command == "status":
        return _status(cluster, args)
    if args.command == "approve":
        return _approve(cluster, args)
    if args.command == "logs":
        return _logs(cluster, args)
    if args.command == "history":
        return _history(cluster, args)
    if args.command == "trials":
        return _trials(cluster, args)
    verb: Action = "promote-full" if args.command == "promote" and args.full else args.command
    return _act(cluster, args, verb)


if __name__ == "__main__":
    sys.exit(main())
