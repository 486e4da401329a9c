"""`mlkube-runtime train`: fit, evaluate, gate and store one model version.

The same code runs in the trainer pod and on a laptop; the pod reports its result through the
termination message (a small JSON document), never by writing to the Kubernetes API.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import sklearn
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)
from sklearn.utils._param_validation import InvalidParameterError

from mlkube.api.modelversion import Column
from mlkube.api.trainingjob import (
    CategoricalPreprocessing,
    NumericPreprocessing,
    Preprocessing,
    QualityGates,
    TrainingJobSpec,
)
from mlkube.estimators import ESTIMATORS, Task
from mlkube.layout import CALIBRATION_FILE
from mlkube.runtime import artifacts
from mlkube.runtime.datasets import LoadedDataset, check_data, load_training_data
from mlkube.runtime.outcome import RunFailure, one_line
from mlkube.runtime.quality import Calibration, fit_calibration
from mlkube.runtime.search import (
    NO_RESULT,
    failed_record,
    first_failure,
    log_trials,
    parse_record,
    rank,
    search_seed,
    trial_parameters,
    trial_uri,
    trials_uri,
)
from mlkube.runtime.search import (
    metric as search_metric,
)
from mlkube.runtime.tracking import RunIdentity, Tracker
from mlkube.runtime.transforms import as_text

REFERENCE_SAMPLE_ROWS = 5000
TERMINATION_MESSAGE_LIMIT = 4096


@dataclass(frozen=True)
class Champion:
    """An earlier version to beat, resolved by the operator from `qualityGates.champion`."""

    uri: str
    sha256: str | None = None


@dataclass(frozen=True)
class TrainRequest:
    spec: TrainingJobSpec
    artifact_root: str
    namespace: str
    version: int
    champion: Champion | None = None
    training_job: str | None = None
    image: str | None = None


def _estimator(spec: TrainingJobSpec) -> Any:
    module_name, class_name = spec.estimator.class_name.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    params = dict(spec.estimator.hyperparameters)
    if "random_state" in inspect.signature(cls).parameters:
        params.setdefault("random_state", spec.split.seed)
    try:
        return cls(**params)
    except TypeError as e:
        raise RunFailure("InvalidHyperparameters", f"estimator.hyperparameters: {e}") from e


def _numeric_steps(options: NumericPreprocessing) -> Pipeline | str:
    steps: list[tuple[str, Any]] = []
    if options.impute != "None":
        strategy = {"Mean": "mean", "Median": "median", "Constant": "constant"}[options.impute]
        fill = float(Decimal(options.fill_value or "0"))
        steps.append(("impute", SimpleImputer(strategy=strategy, fill_value=fill)))
    if options.scale != "None":
        steps.append(("scale", StandardScaler() if options.scale == "Standard" else MinMaxScaler()))
    return Pipeline(steps) if steps else "passthrough"


def _categorical_steps(options: CategoricalPreprocessing) -> Pipeline:
    steps: list[tuple[str, Any]] = [("as_text", FunctionTransformer(as_text))]
    if options.impute != "None":
        strategy = "most_frequent" if options.impute == "MostFrequent" else "constant"
        fill = options.fill_value or "missing"
        steps.append(("impute", SimpleImputer(strategy=strategy, fill_value=fill)))
    if options.encode == "OneHot":  # without imputation, a missing value is a category of its own
        steps.append(("encode", OneHotEncoder(handle_unknown="ignore")))
    else:
        steps.append(
            (
                "encode",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2
                ),
            )
        )
    return Pipeline(steps)


def _pipeline(estimator: Any, columns: list[Column], preprocessing: Preprocessing) -> Pipeline:
    """Impute, scale and encode in front of the estimator, fitted and stored with it.

    Estimators that take no sparse input (HistGradientBoosting*, GaussianNB) get a dense matrix
    even when one-hot encoding makes many columns (scikit-learn#17260).
    """
    numeric = [c.name for c in columns if c.type in ("float", "int")]
    categorical = [c.name for c in columns if c.type in ("string", "bool")]
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        transformers.append(("numeric", _numeric_steps(preprocessing.numeric), numeric))
    if categorical:
        transformers.append(
            ("categorical", _categorical_steps(preprocessing.categorical), categorical)
        )
    tags = estimator.__sklearn_tags__().input_tags
    encode = ColumnTransformer(
        transformers,
        remainder="drop",
        sparse_threshold=0.3 if tags.sparse else 0.0,
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", encode), ("estimator", estimator)])


def _check_missing_handled(spec: TrainingJobSpec, estimator: Any, columns: list[Column]) -> None:
    """A column that may be missing needs an imputer, unless the estimator takes NaN itself."""
    if spec.preprocessing.numeric.impute != "None":
        return
    if estimator.__sklearn_tags__().input_tags.allow_nan:
        return
    nullable = [c.name for c in columns if c.nullable and c.type in ("float", "int")]
    if nullable:
        raise RunFailure(
            "DataValidationFailed",
            f"column {nullable[0]!r} may have missing values, but preprocessing.numeric.impute "
            f"is None and {spec.estimator.class_name} does not take missing values; "
            "choose Mean, Median or Constant",
        )


def _split(
    spec: TrainingJobSpec, task: Task, x: pd.DataFrame, y: pd.Series
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """The held-out split; a stratified one needs two members of each class and room for all."""
    stratify = task == "classification" and spec.split.stratify
    if stratify:
        counts = y.value_counts()
        rare = counts[counts < 2]
        if len(rare):
            raise RunFailure(
                "DataValidationFailed",
                f"class {str(rare.index[0])!r} of target {spec.target!r} has only "
                f"{int(rare.iloc[0])} member; a stratified split needs at least 2 of each class "
                "(add rows, drop the class, or set split.stratify: false)",
            )
        test_rows = math.ceil(len(y) * spec.split.test_percent / 100)
        if min(test_rows, len(y) - test_rows) < len(counts):
            raise RunFailure(
                "DataValidationFailed",
                f"split.testPercent: {spec.split.test_percent}% of {len(y)} rows cannot hold one "
                f"row of each of the {len(counts)} classes on both sides of a stratified split",
            )
    parts: list[Any] = train_test_split(
        x,
        y,
        test_size=spec.split.test_percent / 100,
        random_state=spec.split.seed,
        stratify=y if stratify else None,
    )
    return parts[0], parts[1], parts[2], parts[3]


@contextmanager
def _phase(reason: str, what: str, *, permanent: bool = True) -> Iterator[None]:
    """Whatever fails inside ends as a RunFailure with `reason` and a one-line message.

    Store and network errors (OSError) are transient: the pod exits so that the Job retries.
    """
    try:
        yield
    except RunFailure:
        raise
    except OSError as e:
        raise RunFailure(reason, f"{what}: {one_line(e)}", permanent=False) from e
    except Exception as e:
        raise RunFailure(reason, f"{what}: {one_line(e)}", permanent=permanent) from e


def evaluate(task: Task, model: Any, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """Held-out metrics: accuracy, macro F1 and, with predict_proba, ROC AUC (binary: of the
    second class; else one-vs-rest, macro) for classifiers; RMSE, MAE, R2 for regressors."""
    predicted = model.predict(x)
    if task == "classification":
        metrics = {
            "accuracy": float(accuracy_score(y, predicted)),
            "f1": float(f1_score(y, predicted, average="macro")),
        }
        auc = _roc_auc(model, x, y)
        if auc is not None:
            metrics["roc_auc"] = auc
        return metrics
    return {
        "rmse": float(root_mean_squared_error(y, predicted)),
        "mae": float(mean_absolute_error(y, predicted)),
        "r2": float(r2_score(y, predicted)),
    }


def _roc_auc(model: Any, x: pd.DataFrame, y: pd.Series) -> float | None:
    """None without predict_proba, or when the split lacks a class (ROC AUC is undefined)."""
    if not hasattr(model, "predict_proba"):
        return None
    probabilities = model.predict_proba(x)
    try:
        if probabilities.shape[1] == 2:
            return float(roc_auc_score(y, probabilities[:, 1]))
        return float(
            roc_auc_score(
                y, probabilities, multi_class="ovr", average="macro", labels=model.classes_
            )
        )
    except ValueError:
        return None


def _calibration(
    task: Task, model: Any, x: pd.DataFrame, y: pd.Series, seed: int
) -> Calibration | None:
    """The held-out split's isotonic calibration of the probabilities, for the live quality
    estimate before labels (mlkube.runtime.quality); None when it does not help."""
    if task != "classification" or not hasattr(model, "predict_proba"):
        return None
    truth = pd.Index(model.classes_).get_indexer(y)
    classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    return fit_calibration(classes, model.predict_proba(x), truth, seed=seed)


def gate_failures(gates: QualityGates, metrics: dict[str, float]) -> list[str]:
    """Every absolute gate the metrics miss, as "qualityGates.<gate>: ..." messages."""
    bounds = [
        ("minAccuracy", gates.min_accuracy, "accuracy", 1),
        ("minF1", gates.min_f1, "f1", 1),
        ("minR2", gates.min_r2, "r2", 1),
        ("maxRmse", gates.max_rmse, "rmse", -1),
        ("maxMae", gates.max_mae, "mae", -1),
    ]
    failures = []
    for gate, threshold, metric, direction in bounds:
        if threshold is None:
            continue
        if metric not in metrics:
            failures.append(f"qualityGates.{gate}: the model has no {metric} metric")
            continue
        value = Decimal(repr(metrics[metric]))
        if (value - Decimal(threshold)) * direction < 0:
            failures.append(
                f"qualityGates.{gate}: {metric} {metrics[metric]:.4f} misses {threshold}"
            )
    return failures


def _champion_failure(
    request: TrainRequest, task: Task, metrics: dict[str, float], x: pd.DataFrame, y: pd.Series
) -> str | None:
    """Score the champion on the same held-out split; the challenger must beat it by the margin."""
    gate = request.spec.quality_gates.champion
    if gate is None:
        return None
    name = gate.model_version or f"the version Deployment {gate.deployment} serves"
    if request.champion is None:  # never skipped quietly: the operator always resolves it
        raise RunFailure(
            "ChampionNotFound",
            f"qualityGates.champion: {name} was not resolved to an artifact; outside the "
            "cluster pass --champion-uri and --champion-sha256",
        )
    try:
        champion = artifacts.load_verified_model(request.champion.uri, request.champion.sha256)
    except artifacts.ArtifactError as e:
        raise RunFailure("ChampionNotFound", f"qualityGates.champion: {e}") from e
    champion_metrics = evaluate(task, champion, x, y)
    metric, better = ("accuracy", 1) if task == "classification" else ("rmse", -1)
    margin = float(Decimal(gate.min_improvement))
    improvement = (metrics[metric] - champion_metrics[metric]) * better
    if improvement < margin:
        return (
            f"qualityGates.champion: {metric} {metrics[metric]:.4f} against {name}'s "
            f"{champion_metrics[metric]:.4f} improves by {improvement:.4f}, "
            f"less than {gate.min_improvement}"
        )
    return None


def _lineage(request: TrainRequest, loaded: LoadedDataset) -> dict[str, Any]:
    spec = request.spec
    return {
        "trainingJob": request.training_job,
        "datasetUri": spec.dataset.describe(),
        "datasetDigest": loaded.digest,
        **({"inferenceLog": loaded.log_window} if loaded.log_window else {}),
        "inferenceLog": loaded.log_window,
        "image": request.image,
        "estimator": spec.estimator.class_name,
        "params": spec.estimator.hyperparameters,
        "seed": spec.split.seed,
        "libraries": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
    }


def train(request: TrainRequest) -> dict[str, Any]:
    """Run the whole training; returns the result document, or raises RunFailure. With
    `tracking.mlflow`, the run is started before anything else and ends FAILED with the reason
    of a failed training."""
    spec = request.spec
    identity = RunIdentity(
        request.namespace, request.training_job, spec.model, request.version, request.image
    )
    tracker = Tracker(spec.tracking.mlflow if spec.tracking else None, identity)
    tracker.start()
    try:
        result = _train(request, tracker)
    except RunFailure as failure:
        tracker.fail(failure)
        raise
    tracking = tracker.result()
    return {**result, "tracking": tracking} if tracking else result


@dataclass(frozen=True)
class Prepared:
    """The checked data, split: what the training and every trial start from."""

    task: Task
    loaded: LoadedDataset
    checked: pd.DataFrame
    features: list[str]
    columns: list[Column]
    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def _prepare(request: TrainRequest) -> Prepared:
    spec = request.spec
    task = ESTIMATORS[spec.estimator.class_name]
    with _phase("DatasetNotFound", f"dataset {spec.dataset.describe()}"):
        loaded = load_training_data(
            spec.dataset, spec.target, spec.features, request.artifact_root, request.namespace
        )
    with _phase("DataValidationFailed", "checking the data"):
        frame = loaded.frame
        features = spec.features or [str(c) for c in frame.columns if c != spec.target]
        checked, columns = check_data(frame, spec.target, features, spec.data_tests)
        x, y = checked[features], checked[spec.target]
    with _phase("DataValidationFailed", "splitting the data"):
        x_train, x_test, y_train, y_test = _split(spec, task, x, y)
    return Prepared(task, loaded, checked, features, columns, x_train, x_test, y_train, y_test)


def _train(request: TrainRequest, tracker: Tracker) -> dict[str, Any]:
    prepared = _prepare(request)
    searched: dict[str, Any] = {}
    if request.spec.search is not None:
        request, searched = _winner(request, prepared, tracker)
    spec = request.spec
    task, loaded, checked, features, columns = (
        prepared.task, prepared.loaded, prepared.checked, prepared.features, prepared.columns
    )  # fmt: skip
    x_train, x_test, y_train, y_test = (
        prepared.x_train, prepared.x_test, prepared.y_train, prepared.y_test
    )  # fmt: skip
    estimator = _estimator(spec)
    _check_missing_handled(spec, estimator, columns)
    model = _pipeline(estimator, columns, spec.preprocessing)
    with _phase("TrainingFailed", f"estimator {spec.estimator.class_name}"):
        model.fit(x_train, y_train)
    with _phase("EvaluationFailed", "evaluating on the held-out split"):
        metrics = evaluate(task, model, x_test, y_test)
    failures = gate_failures(spec.quality_gates, metrics)
    champion_failure = _champion_failure(request, task, metrics, x_test, y_test)
    if champion_failure:
        failures.append(champion_failure)
    if failures:
        raise RunFailure("QualityGateFailed", "; ".join(failures))
    with _phase("EvaluationFailed", "calibrating probabilities on the held-out split"):
        calibration = _calibration(task, model, x_test, y_test, spec.split.seed)

    directory = artifacts.version_uri(
        request.artifact_root, request.namespace, spec.model, request.version
    )
    classes = [str(c) for c in model.classes_] if task == "classification" else None
    schema = artifacts.ModelSchema(task=task, target=spec.target, columns=columns, classes=classes)
    sample = x_train.sample(
        n=min(REFERENCE_SAMPLE_ROWS, len(x_train)), random_state=spec.split.seed
    )
    with _phase("ArtifactStoreError", f"writing {directory}"):
        digest = artifacts.save_model(directory, model)
        files = {
            artifacts.SCHEMA_FILE: artifacts.write_json(
                artifacts.join(directory, artifacts.SCHEMA_FILE), schema.to_json()
            ),
            artifacts.METRICS_FILE: artifacts.write_json(
                artifacts.join(directory, artifacts.METRICS_FILE), metrics
            ),
            artifacts.LINEAGE_FILE: artifacts.write_json(
                artifacts.join(directory, artifacts.LINEAGE_FILE), _lineage(request, loaded)
            ),
            artifacts.REFERENCE_FILE: artifacts.write_bytes(
                artifacts.join(directory, artifacts.REFERENCE_FILE),
                sample.reset_index(drop=True).to_parquet(),
            ),
        }
        if calibration is not None:
            files[CALIBRATION_FILE] = artifacts.write_json(
                artifacts.join(directory, CALIBRATION_FILE), calibration.to_json()
            )
    rows = checked[[*features, spec.target]]
    tracker.log(spec, metrics, rows, loaded.digest, model, columns, digest)
    return {
        "status": "Succeeded",
        "model": spec.model,
        "version": request.version,
        "task": task,
        "artifactUri": directory,
        "sha256": digest,
        "files": files,
        "datasetDigest": loaded.digest,
        **({"inferenceLog": loaded.log_window} if loaded.log_window else {}),
        "metrics": {k: f"{v:.6g}" for k, v in metrics.items()},
        "classes": classes,
        "columns": [[c.name, c.type, *([True] if c.nullable else [])] for c in columns],
        "framework": {"version": sklearn.__version__, "pythonVersion": platform.python_version()},
        **searched,
    }


# -- hyperparameter search (spec.search) ---------------------------------------------------------


def _with_hyperparameters(spec: TrainingJobSpec, parameters: dict[str, Any]) -> TrainingJobSpec:
    """The spec with a trial's parameters over estimator.hyperparameters."""
    merged = {**spec.estimator.hyperparameters, **parameters}
    estimator = spec.estimator.model_copy(update={"hyperparameters": merged})
    return spec.model_copy(update={"estimator": estimator})


def _folds(
    spec: TrainingJobSpec, prepared: Prepared, seed: int
) -> list[tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]]:
    """(x_fit, y_fit, x_validation, y_validation) from the training split only: one validation
    split of search.validationPercent, or search.cvFolds folds. The test split is never read."""
    assert spec.search is not None
    x, y = prepared.x_train, prepared.y_train
    stratify = prepared.task == "classification" and spec.split.stratify
    with _phase("DataValidationFailed", "carving the validation split from the training split"):
        if spec.search.cv_folds is None:
            parts: list[Any] = train_test_split(
                x,
                y,
                test_size=spec.search.validation_percent / 100,
                random_state=seed,
                stratify=y if stratify else None,
            )
            return [(parts[0], parts[2], parts[1], parts[3])]
        folds = spec.search.cv_folds
        splitter = (
            StratifiedKFold(folds, shuffle=True, random_state=seed)
            if stratify
            else KFold(folds, shuffle=True, random_state=seed)
        )
        return [
            (x.iloc[fit], y.iloc[fit], x.iloc[val], y.iloc[val])
            for fit, val in splitter.split(x, y)
        ]


def _validation_score(
    request: TrainRequest, prepared: Prepared, parameters: dict[str, Any], metric_name: str
) -> tuple[float, float]:
    """(the trial's mean validation `metric_name`, seconds spent fitting)."""
    assert request.spec.search is not None
    spec = _with_hyperparameters(request.spec, parameters)
    seed = search_seed(request.spec.search, spec.split.seed)
    estimator = _estimator(spec)
    _check_missing_handled(spec, estimator, prepared.columns)
    scores, fit_seconds = [], 0.0
    for x_fit, y_fit, x_val, y_val in _folds(spec, prepared, seed):
        model = _pipeline(clone(estimator), prepared.columns, spec.preprocessing)
        started = time.perf_counter()
        try:
            model.fit(x_fit, y_fit)
        except InvalidParameterError as e:  # scikit-learn checks parameters when fitting
            raise RunFailure("InvalidHyperparameters", f"search: {one_line(e)}") from e
        except Exception as e:
            raise RunFailure("TrainingFailed", f"estimator {spec.estimator.class_name}: "
                             f"{one_line(e)}") from e  # fmt: skip
        fit_seconds += time.perf_counter() - started
        with _phase("EvaluationFailed", "evaluating on the validation split"):
            metrics = evaluate(prepared.task, model, x_val, y_val)
        if metric_name not in metrics:
            raise RunFailure(
                "EvaluationFailed",
                f"search.metric: the model has no {metric_name} on the validation split",
            )
        scores.append(metrics[metric_name])
    return float(np.mean(scores)), fit_seconds


def run_trial(request: TrainRequest, index: int, pod: str | None = None) -> dict[str, Any]:
    """Trial `index` of spec.search: its parameters (`mlkube.runtime.search.trial_parameters`),
    fitted and scored on validation data carved from the training split; the record is written
    to the version's trials directory (the same name on a retry) and returned.

    A trial that cannot succeed as specified (a hyperparameter the estimator rejects, data that
    fails its tests) is recorded as Failed and returned; transient store errors raise RunFailure
    (permanent=False) so that the Job retries the index."""
    spec = request.spec
    if spec.search is None:
        raise RunFailure("InvalidSpec", "spec.search must be set to run a trial")
    try:
        parameters = trial_parameters(spec.search, search_seed(spec.search, spec.split.seed), index)
    except IndexError as e:
        raise RunFailure("InvalidSpec", f"search: {e}") from e
    record: dict[str, Any]
    try:
        prepared = _prepare(request)
        name = search_metric(spec.search, prepared.task)
        value, fit_seconds = _validation_score(request, prepared, parameters, name)
        record = {
            "index": index,
            "status": "Succeeded",
            "parameters": parameters,
            "metric": name,
            "value": f"{value:.10g}",
            "fitSeconds": f"{fit_seconds:.3f}",
        }
    except RunFailure as failure:
        if not failure.permanent:
            raise
        record = failed_record(index, failure.reason, failure.message, parameters)
    if pod:
        record["pod"] = pod
    uri = trial_uri(trials_uri(request.artifact_root, request.namespace, spec.model,
                               request.version), index)  # fmt: skip
    with _phase("ArtifactStoreError", f"writing {uri}", permanent=False):
        artifacts.write_json(uri, record)
    return record


def read_trials(request: TrainRequest) -> list[dict[str, Any]]:
    """Every trial's record from the store, in index order; a missing one is a failed trial."""
    spec, search = request.spec, request.spec.search
    assert search is not None
    directory = trials_uri(request.artifact_root, request.namespace, spec.model, request.version)
    records = []
    for index in range(search.trial_count()):
        uri = trial_uri(directory, index)
        try:
            records.append(parse_record(artifacts.read_bytes(uri), index))
        except artifacts.ArtifactError:
            records.append(failed_record(index, NO_RESULT, f"trial {index} recorded no result"))
        except OSError as e:
            raise RunFailure("ArtifactStoreError", f"reading {uri}: {one_line(e)}",
                             permanent=False) from e  # fmt: skip
    return records


def _winner(
    request: TrainRequest, prepared: Prepared, tracker: Tracker
) -> tuple[TrainRequest, dict[str, Any]]:
    """The best trial's request (its parameters over the spec's) and what the result says of
    the search; every trial is logged as a child run. Raises RunFailure with the first trial's
    reason when every trial failed."""
    search = request.spec.search
    assert search is not None
    name = search_metric(search, prepared.task)
    records = read_trials(request)
    log_trials(tracker, records, name)
    ranked = rank(records, name)
    if not ranked or ranked[0].get("status") != "Succeeded":
        raise RunFailure(*first_failure(records))
    best = ranked[0]
    spec = _with_hyperparameters(request.spec, dict(best["parameters"]))
    keep = ("index", "parameters", "value", "fitSeconds", "pod")
    summary = {
        "metric": name,
        "trials": len(records),
        "failed": sum(1 for r in records if r.get("status") != "Succeeded"),
        "winner": {k: best[k] for k in keep if k in best},
        "trialsUri": trials_uri(
            request.artifact_root, request.namespace, spec.model, request.version
        ),
    }
    searched = {"search": summary, "params": spec.estimator.hyperparameters}
    return replace(request, spec=spec), searched


def failure_result(failure: RunFailure) -> dict[str, Any]:
    return {"status": "Failed", "reason": failure.reason, "message": failure.message}


def termination_message(result: dict[str, Any]) -> str:
    """The result as JSON within the kubelet's 4 KiB termination-message limit."""
    text = json.dumps(result, separators=(",", ":"))
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
        return text
    trimmed = {**result, "columns": None, "schemaTruncated": True}
    if "message" in trimmed:
        trimmed["message"] = str(trimmed["message"])[:1024]
    return json.dumps(trimmed, separators=(",", ":"))[:TERMINATION_MESSAGE_LIMIT]


def next_free_version(artifact_root: str, namespace: str, model: str) -> int:
    """For laptop runs: the version after the highest one in the store."""
    fs, path = fsspec.core.url_to_fs(artifacts.join(artifact_root, namespace, model))
    if not fs.exists(path):
        return 1
    versions = [
        int(p.rsplit("/", 1)[-1])
        for p in fs.ls(path, detail=False)
        if p.rsplit("/", 1)[-1].isdigit()
    ]
    return max(versions, default=0) + 1
