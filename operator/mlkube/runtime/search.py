"""Hyperparameter search, the pure part: each trial's parameters, where its record lives, and how
trials rank. The trial runner and the winner's training are in `mlkube.runtime.train`.

A trial's parameters follow from (space, method, seed, index) alone, so any pod can derive them,
a retried index tries the same ones, and the same seed gives the same trials and winner.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from pydantic import JsonValue

from mlkube.api.trainingjob import Search, SearchDimension
from mlkube.layout import join, version_uri
from mlkube.runtime.outcome import RunFailure
from mlkube.runtime.tracking import TRACKING_UNAVAILABLE, Tracker

TRIALS_DIR = "trials"
LOWER_IS_BETTER = frozenset({"rmse", "mae"})
DEFAULT_METRIC = {"classification": "accuracy", "regression": "rmse"}
"""The metric a search ranks by when `search.metric` is unset: the task's gate metric."""
NO_RESULT = "NoResult"
"""A trial whose pod never recorded a result (killed, or out of retries)."""


def metric(search: Search, task: str) -> str:
    return search.metric or DEFAULT_METRIC[task]


def search_seed(search: Search, split_seed: int) -> int:
    return split_seed if search.seed is None else search.seed


def grid(space: Mapping[str, SearchDimension]) -> list[dict[str, JsonValue]]:
    """Every combination of the listed values, hyperparameters in name order, the last one
    varying fastest (as scikit-learn's ParameterGrid)."""
    names = sorted(space)
    values = [space[name].values or [] for name in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def _sample(dimension: SearchDimension, rng: random.Random) -> JsonValue:
    if dimension.values is not None:
        return dimension.values[rng.randrange(len(dimension.values))]
    low, high = float(Decimal(str(dimension.min))), float(Decimal(str(dimension.max)))
    if dimension.type == "int":
        low_int, high_int = math.ceil(low), math.floor(high)
        if dimension.log:
            drawn = math.exp(rng.uniform(math.log(low_int), math.log(high_int + 1)))
            return min(high_int, int(drawn))
        return rng.randint(low_int, high_int)
    if dimension.log:
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def trial_parameters(search: Search, seed: int, index: int) -> dict[str, JsonValue]:
    """Trial `index`'s hyperparameters. Grid: the index-th combination of `grid`; Random: one
    draw per hyperparameter (in name order) from a generator seeded by (seed, index) alone, so a
    trial never depends on another. Raises IndexError for an index outside the search."""
    if not 0 <= index < search.trial_count():
        raise IndexError(f"trial {index} is outside a search of {search.trial_count()} trials")
    if search.method == "Grid":
        names = sorted(search.space)
        sizes = [len(search.space[name].values or []) for name in names]
        chosen: dict[str, JsonValue] = {}
        rest = index
        for name, size in reversed(list(zip(names, sizes, strict=True))):
            rest, position = divmod(rest, size)
            chosen[name] = (search.space[name].values or [])[position]
        return {name: chosen[name] for name in names}
    rng = random.Random(f"mlkube-search:{seed}:{index}")  # str seeds hash the same everywhere
    return {name: _sample(search.space[name], rng) for name in sorted(search.space)}


def trials_uri(root: str, namespace: str, model: str, version: int) -> str:
    """The search's records, under the version it trains in the namespace's store: never another
    namespace's, and never an earlier search's (versions are not reused)."""
    return join(version_uri(root, namespace, model, version), TRIALS_DIR)


def trial_uri(trials: str, index: int) -> str:
    """One record per index, written again as is by a retry (idempotent)."""
    return join(trials, f"trial-{index:05d}.json")


def higher_is_better(name: str) -> bool:
    return name not in LOWER_IS_BETTER


def rank(trials: Iterable[Mapping[str, Any]], metric_name: str) -> list[Mapping[str, Any]]:
    """Best first: succeeded trials by their validation `value` (ties: the lower index), then
    failed ones by index. Deterministic for the same records in any order."""
    sign = -1.0 if higher_is_better(metric_name) else 1.0
    ok: list[Mapping[str, Any]] = []
    failed: list[Mapping[str, Any]] = []
    for t in trials:
        scored = t.get("status") == "Succeeded" and _number(t.get("value"))
        (ok if scored else failed).append(t)
    ok.sort(key=lambda t: (sign * float(t["value"]), int(t["index"])))
    failed.sort(key=lambda t: int(t.get("index", 0)))
    return [*ok, *failed]


def _number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def parse_record(text: str | bytes, index: int) -> dict[str, Any]:
    """A stored or reported trial record, or a failed one saying why it cannot be read."""
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return failed_record(index, NO_RESULT, f"trial {index}: unreadable record: {e}")
    if not isinstance(record, dict) or record.get("index") != index:
        return failed_record(index, NO_RESULT, f"trial {index}: the record is not this trial's")
    return record


def failed_record(
    index: int, reason: str, message: str, parameters: Mapping[str, JsonValue] | None = None
) -> dict[str, Any]:
    return {
        "index": index,
        "status": "Failed",
        "parameters": dict(parameters or {}),
        "reason": reason,
        "message": message[:1024],
    }


def first_failure(trials: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """(reason, message) of the lowest-index failed trial: why a search of failures failed."""
    first = min(trials, key=lambda t: int(t.get("index", 0)))
    message = f"every trial failed; trial {first.get('index')}: {first.get('message', '')}"
    return str(first.get("reason") or NO_RESULT), message


def log_trials(tracker: Tracker, records: Iterable[Mapping[str, Any]], metric_name: str) -> None:
    """Each trial as a child run of the training's MLflow run (tag mlflow.parentRunId, as MLflow's
    UI nests runs): its parameters, its validation metric (``validation_<metric>``), its fit
    seconds and pod, FINISHED or FAILED with the reason. Logged by the winner's pod once every
    trial is recorded, so trial pods need no tracking server. A server that fails here fails the
    training when tracking is required, else the training goes on untracked and says why."""
    if not tracker.active or tracker.run_id is None or tracker.settings is None:
        return
    try:
        _log_trials(tracker, records, metric_name)
    except Exception as e:
        message = f"tracking.mlflow: cannot log the trials at {tracker.settings.tracking_uri}: {e}"
        if tracker.settings.required:
            raise RunFailure(TRACKING_UNAVAILABLE, message[:1024], permanent=False) from e
        tracker.unavailable = message[:1024]


def _log_trials(tracker: Tracker, records: Iterable[Mapping[str, Any]], metric_name: str) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    assert tracker.settings is not None and tracker.run_id is not None
    client = MlflowClient(tracking_uri=tracker.settings.tracking_uri)
    parent = tracker.settings.run_name or tracker.identity.training_job or tracker.identity.model
    now = int(time.time() * 1000)
    for record in records:
        index = int(record["index"])
        tags = {
            **tracker.identity.tags(),
            "mlflow.parentRunId": tracker.run_id,
            "mlkube.trial": str(index),
        }
        for key in ("pod", "reason", "message"):
            if record.get(key):
                tags[f"mlkube.{key}"] = str(record[key])[:5000]
        run = client.create_run(
            str(tracker.experiment_id), run_name=f"{parent}-trial-{index}", tags=tags
        )
        parameters = record.get("parameters") or {}
        metrics = []
        if record.get("status") == "Succeeded":
            metrics.append(Metric(f"validation_{metric_name}", float(record["value"]), now, 0))
        if record.get("fitSeconds") is not None:
            metrics.append(Metric("fit_seconds", float(record["fitSeconds"]), now, 0))
        client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=[Param(f"estimator.{k}", _text(v)) for k, v in parameters.items()],
            tags=[RunTag("mlkube.status", str(record.get("status")))],
        )
        status = "FINISHED" if record.get("status") == "Succeeded" else "FAILED"
        client.set_terminated(run.info.run_id, status)


def _text(value: Any) -> str:
    """A parameter as MLflow keeps it (and as status shows it): strings as they are, else JSON."""
    return value if isinstance(value, str) else json.dumps(value)
