"""`mlkube-runtime train|serve|drift|batch --spec FILE`: what runs in a pod runs on a laptop
(also `verify` and `mlflow-aliases`, the operator's short Jobs).

`--spec` takes the custom resource as applied (or just its `spec`). Results are printed as JSON
and, in a pod, written to the termination-message file the operator reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mlkube.api.batchprediction import BatchPredictionSpec
from mlkube.api.driftmonitor import DriftMonitorSpec
from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.contract import POD_NAME_ENV, SHARD_INDEX_ENV
from mlkube.runtime.outcome import EXIT_PERMANENT, RunFailure, one_line

DEFAULT_TERMINATION_LOG = "/dev/termination-log"

LOGGED_ROWS_RESERVE = 32
"""Bytes kept free in the drift result for `loggedRows`."""

SpecT = TypeVar("SpecT", bound=BaseModel)


def load_spec(source: str, model: type[SpecT]) -> SpecT:
    """Read a spec from a YAML file, or from an environment variable given as `env:NAME`."""
    if source.startswith("env:"):
        text = os.environ.get(source.removeprefix("env:"))
        if text is None:
            raise FileNotFoundError(
                f"environment variable {source.removeprefix('env:')} is not set"
            )
    else:
        text = Path(source).read_text()
    document: Any = yaml.safe_load(text)
    # a manifest, or a bare `spec:` mapping (as `serve --spec` takes); no spec has a `spec` field
    if isinstance(document, dict) and isinstance(document.get("spec"), dict):
        document = document["spec"]
    return model.model_validate(document)


def _write_result(text: str, result_file: str | None) -> None:
    print(text)
    target = result_file or (
        DEFAULT_TERMINATION_LOG if Path(DEFAULT_TERMINATION_LOG).exists() else None
    )
    if target:
        Path(target).write_text(text)


def _train(args: argparse.Namespace) -> int:
    from mlkube.runtime import train  # the heavy imports only for the command that needs them

    spec = load_spec(args.spec, TrainingJobSpec)
    version = args.version or train.next_free_version(
        args.artifact_root, args.namespace, spec.model
    )
    champion = (
        train.Champion(args.champion_uri, args.champion_sha256) if args.champion_uri else None
    )
    request = train.TrainRequest(
        spec=spec,
        artifact_root=args.artifact_root,
        namespace=args.namespace,
        version=version,
        champion=champion,
        training_job=os.environ.get("MLKUBE_TRAININGJOB"),
        image=os.environ.get("MLKUBE_IMAGE"),
    )
    try:
        if args.trial is not None:  # one trial of spec.search: its record, Failed ones included
            result = train.run_trial(request, args.trial, os.environ.get(POD_NAME_ENV))
        else:
            result = train.train(request)
    except RunFailure as failure:
        _write_result(train.termination_message(train.failure_result(failure)), args.result_file)
        return failure.exit_code
    except Exception as e:  # a bug of ours: its traceback goes to the log, never to the status
        traceback.print_exc()
        internal = RunFailure("InternalError", one_line(e), permanent=False)
        _write_result(train.termination_message(train.failure_result(internal)), args.result_file)
        return internal.exit_code
    _write_result(train.termination_message(result), args.result_file)
    return 0


def _drift(args: argparse.Namespace) -> int:
    from mlkube.runtime.drift import TERMINATION_MESSAGE_BYTES, run_drift
    from mlkube.runtime.inference_log import count_rows
    from mlkube.runtime.quality import RESULT_BYTES, version_performance

    spec = load_spec(args.spec, DriftMonitorSpec)
    report = run_drift(spec, args.reference, args.log, model_version=args.model_version)
    reserve = LOGGED_ROWS_RESERVE + (0 if spec.performance is None else RESULT_BYTES + 32)
    result = json.loads(report.to_json(TERMINATION_MESSAGE_BYTES - reserve))
    if spec.performance is not None:  # live quality of the same version, judged on labels
        result["performance"] = version_performance(
            spec, args.log, result.get("modelVersion") or args.model_version, args.model_uri
        )
    # every row ever logged, by every version, for the retrain rule's minNewSamples
    result["loggedRows"] = count_rows(args.log)
    _write_result(json.dumps(result, separators=(",", ":")), args.result_file)
    # an Error verdict (the window's data cannot be compared) is not fixed by retrying the Job
    return EXIT_PERMANENT if report.verdict == "Error" else 0


def _verify(args: argparse.Namespace) -> int:
    """Check a version directory has every file a server or a drift check needs, each with its
    recorded digest, without loading anything."""
    from mlkube.runtime import artifacts

    files = dict(item.split("=", 1) for item in args.file)
    try:
        size = artifacts.verify_version(args.uri, args.sha256, files)
    except artifacts.VerifyFailure as e:
        result: dict[str, Any] = {"status": "Failed", "reason": e.reason, "message": str(e)}
    else:
        result = {"status": "Verified", "sha256": args.sha256, "files": len(files), "bytes": size}
    _write_result(json.dumps(result, separators=(",", ":")), args.result_file)
    return 0 if result["status"] == "Verified" else EXIT_PERMANENT


def _batch(args: argparse.Namespace) -> int:
    """One step of a BatchPrediction: plan, shard (JOB_COMPLETION_INDEX in a pod), manifest;
    or `run`, all three on this machine."""
    from mlkube.runtime import batch

    spec = load_spec(args.spec, BatchPredictionSpec)
    try:
        if args.step == "plan":
            result = batch.plan(spec, args.run_id, args.model_uri)
            _write_result(json.dumps(result, separators=(",", ":")), args.result_file)
            return 0
        scoring = batch.Scoring(args.model_version, getattr(args, "model_uri", ""), args.sha256)
        if args.step == "shard":
            result = batch.score_shard(spec, args.run_id, args.shard, scoring)
        elif args.step == "manifest":
            result = batch.write_manifest(spec, args.run_id, args.model_version, args.sha256)
        else:
            result = batch.run_local(spec, args.run_id, scoring, args.parallelism)
    except RunFailure as failure:
        result = {"status": "Failed", "reason": failure.reason, "message": failure.message}
        _write_result(json.dumps(result, separators=(",", ":")), args.result_file)
        return failure.exit_code
    except Exception as e:  # a bug of ours: its traceback goes to the log, never to the status
        traceback.print_exc()
        internal = RunFailure("InternalError", one_line(e), permanent=False)
        result = {"status": "Failed", "reason": internal.reason, "message": internal.message}
        _write_result(json.dumps(result, separators=(",", ":")), args.result_file)
        return internal.exit_code
    _write_result(json.dumps(result, separators=(",", ":")), args.result_file)
    return EXIT_PERMANENT if result.get("failures") else 0


def _mlflow_aliases(args: argparse.Namespace) -> int:
    from mlkube.runtime.tracking import sync_aliases

    set_ = dict(item.split("=", 1) for item in args.set)
    try:
        result = sync_aliases(args.tracking_uri, args.registered_model, set_, args.delete)
    except RunFailure as failure:
        result = {"status": "Failed", "reason": failure.reason, "message": failure.message}
        _write_result(json.dumps(result, separators=(",", ":")), args.result_file)
        return failure.exit_code
    _write_result(json.dumps(result, separators=(",", ":")), args.result_file)
    return 0


def _serve(args: argparse.Namespace, rest: list[str]) -> int:
    from mlkube.runtime.serving_cli import serve_main

    return serve_main(rest)


def _file_digest(text: str) -> str:
    name, _, digest = text.partition("=")
    if not name or len(digest) != 64:
        raise argparse.ArgumentTypeError(f"{text!r} must be NAME=SHA256")
    return text


def _alias_version(text: str) -> str:
    alias, _, version = text.partition("=")
    if not alias or not version.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} must be ALIAS=VERSION")
    return text


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mlkube-runtime", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fit, evaluate, gate and store a model version")
    train.add_argument(
        "--spec", required=True, help="TrainingJob manifest or spec: a YAML file, or env:NAME"
    )
    train.add_argument(
        "--artifact-root",
        default=os.environ.get("MLKUBE_ARTIFACT_ROOT", "./mlkube-artifacts"),
        help="artifact store root: a path, file:// or s3:// (env MLKUBE_ARTIFACT_ROOT)",
    )
    train.add_argument("--namespace", default=os.environ.get("MLKUBE_NAMESPACE", "default"))
    train.add_argument("--version", type=int, help="version number (default: next free one)")
    train.add_argument("--champion-uri", help="artifact directory of the version to beat")
    train.add_argument("--champion-sha256")
    train.add_argument("--result-file", help="also write the result here")
    train.add_argument(
        "--trial",
        type=int,
        nargs="?",
        const=int(os.environ.get(SHARD_INDEX_ENV, "0")),
        help=f"run trial INDEX of spec.search (default: ${SHARD_INDEX_ENV}, an Indexed Job's "
        "index) and record it, instead of training",
    )

    drift = commands.add_parser("drift", help="compare logged inputs with the reference sample")
    drift.add_argument(
        "--spec", required=True, help="DriftMonitor manifest or spec: a YAML file, or env:NAME"
    )
    drift.add_argument("--reference", required=True, help="reference Parquet URI")
    drift.add_argument(
        "--log",
        required=True,
        help="the Deployment's inference log directory URI (or a flat log directory)",
    )
    drift.add_argument(
        "--model-version",
        help="read only this ModelVersion's directory <log>/<NAME>/ (default: the flat log, "
        "else the version that logged last); the result names the version in modelVersion",
    )
    drift.add_argument(
        "--model-uri",
        help="the watched version's artifact directory: task, classes, offline metrics and "
        "calibration for spec.performance",
    )
    drift.add_argument("--result-file")

    verify = commands.add_parser("verify", help="check an artifact against its recorded sha256")
    verify.add_argument("--uri", required=True, help="the version directory")
    verify.add_argument("--sha256", required=True, help="of model.joblib")
    verify.add_argument(
        "--file",
        action="append",
        default=[],
        type=_file_digest,
        metavar="NAME=SHA256",
        help="another file's recorded digest (repeatable)",
    )
    verify.add_argument("--result-file")

    aliases = commands.add_parser(
        "mlflow-aliases", help="set and delete aliases of a model in MLflow's registry"
    )
    aliases.add_argument("--tracking-uri", required=True, help="the tracking server")
    aliases.add_argument("--registered-model", required=True)
    aliases.add_argument(
        "--set",
        action="append",
        default=[],
        type=_alias_version,
        metavar="ALIAS=VERSION",
        help="point an alias at a version (repeatable)",
    )
    aliases.add_argument(
        "--delete", action="append", default=[], metavar="ALIAS", help="remove (repeatable)"
    )
    aliases.add_argument("--result-file")

    commands.add_parser("serve", help="serve a model version with BentoML", add_help=False)

    batch = commands.add_parser(
        "batch", help="score Parquet or CSV files in the store with a model version"
    )
    steps = batch.add_subparsers(dest="step", required=True)
    for step, text in (
        ("plan", "list and count the input, claim the output, write the plan"),
        ("shard", "score one shard into its part"),
        ("manifest", "merge the shards' records into _manifest.json"),
        ("run", "plan, every shard and the manifest, on this machine"),
    ):
        command = steps.add_parser(step, help=text)
        command.add_argument(
            "--spec",
            required=True,
            help="BatchPrediction manifest or spec: a YAML file, or env:NAME",
        )
        command.add_argument(
            "--run-id", default="local", help="the run's id (the BatchPrediction's uid in a pod)"
        )
        if step != "plan":
            command.add_argument(
                "--model-version", default="local", help="the ModelVersion's name, recorded"
            )
            command.add_argument("--sha256", help="of model.joblib (default: the one beside it)")
        command.add_argument(
            "--model-uri",
            required=step in ("shard", "run"),
            help="the version directory (model.joblib, schema.json); the plan reads the "
            "schema's columns and refuses a file without them",
        )
        if step == "shard":
            command.add_argument(
                "--shard",
                type=int,
                default=int(os.environ.get(SHARD_INDEX_ENV, "0")),
                help=f"the shard to score (default: ${SHARD_INDEX_ENV}, an Indexed Job's index)",
            )
        if step == "run":
            command.add_argument("--parallelism", type=int, help="default: the spec's")
        command.add_argument("--result-file")
    return root


def main(argv: list[str] | None = None) -> int:
    args, rest = parser().parse_known_args(argv)
    try:
        if args.command == "serve":
            return _serve(args, rest)
        if rest:
            parser().error(f"unrecognized arguments: {' '.join(rest)}")
        commands = {
            "train": _train,
            "drift": _drift,
            "verify": _verify,
            "batch": _batch,
            "mlflow-aliases": _mlflow_aliases,
        }
        return commands[args.command](args)
    except (ValidationError, FileNotFoundError, yaml.YAMLError) as e:
        print(f"mlkube-runtime {args.command}: invalid --spec: {e}", file=sys.stderr)
        return EXIT_PERMANENT


if __name__ == "__main__":
    sys.exit(main())
