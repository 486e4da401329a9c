"""MLflow tracking of one training (`spec.tracking.mlflow`): a run with the parameters, the held-out
metrics, the dataset, mlkube's tags and the model (scikit-learn flavor, signature from the input
schema), registered in MLflow's registry on request; and a Deployment's aliases there (`sync_aliases`).

`mlflow` (mlflow-skinny, the `tracking` extra) is imported only when a spec asks for tracking. The
server is reached before fitting, so an unreachable one costs no training time: with `required`
the run fails as TrackingUnavailable, else the training goes on untracked and says why.
Client: MLflow's Python API (mlflow.org/docs/latest/python_api); credentials from the env MLflow
reads (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlkube.api.modelversion import Column
from mlkube.api.trainingjob import MlflowTracking, TrainingJobSpec
from mlkube.runtime.outcome import RunFailure, one_line

TRACKING_UNAVAILABLE = "TrackingUnavailable"
ALIAS_REFUSED = "AliasRefused"
REFUSALS = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
"""MLflow's error codes for a request it understood and refused (not the server or the
credentials)."""
MODEL_NAME = "model"
"""The logged model's name in its run (``runs:/<id>/model``)."""
CLIENT_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
"""MLflow's client retries for minutes by default (7 retries, backoff factor 2, 120 s each): an
unreachable server is named within seconds instead. Set only where the environment does not."""
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "GIT_PYTHON_REFRESH": "quiet"}
SCHEMA_TYPES = {"float": "double", "int": "long", "string": "string", "bool": "boolean"}
"""mlkube column types -> MLflow ColSpec types."""


@dataclass(frozen=True)
class RunIdentity:
    """Who the run is for: tags, and the run's default name."""

    namespace: str
    training_job: str | None
    model: str
    version: int
    image: str | None

    def tags(self) -> dict[str, str]:
        tags = {
            "mlkube.namespace": self.namespace,
            "mlkube.model": self.model,
            "mlkube.version": str(self.version),
            "mlkube.modelVersion": f"{self.model}-v{self.version}",
        }
        if self.training_job:
            tags["mlkube.trainingJob"] = self.training_job
        if self.image:
            tags["mlkube.image"] = self.image
        return tags


def params(spec: TrainingJobSpec) -> dict[str, str]:
    """The training's parameters as MLflow params: estimator and hyperparameters, preprocessing,
    split and seed, target and dataset (MLflow keeps values as strings)."""
    flat: dict[str, str] = {
        "estimator": spec.estimator.class_name,
        "target": spec.target,
        "dataset.uri": spec.dataset.describe(),
        "dataset.format": spec.dataset.format,
    }
    for name, value in spec.estimator.hyperparameters.items():
        flat[f"estimator.{name}"] = value if isinstance(value, str) else json.dumps(value)
    for section in ("preprocessing", "split"):
        for key, value in _flatten(getattr(spec, section).to_api(), section).items():
            flat[key] = value
    return flat


def _flatten(document: Mapping[str, Any], prefix: str) -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in document.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}.{key}"))
        else:
            flat[f"{prefix}.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in MLflow's UI."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class Tracker:
    """One training's MLflow run. Without `settings` every method does nothing; with a server
    that failed while not `required`, the rest does nothing and `result` says why."""

    def __init__(self, settings: MlflowTracking | None, identity: RunIdentity) -> None:
        self.settings = settings
        self.identity = identity
        self.unavailable: str | None = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.registered_version: str | None = None
        self._client: Any = None

    @property
    def active(self) -> bool:
        return self.settings is not None and self.unavailable is None

    def _failed(self, what: str, error: BaseException) -> None:
        """Not required: remember why (the result carries it); required: the run fails."""
        assert self.settings is not None
        message = f"tracking.mlflow: {what} at {self.settings.tracking_uri}: {_why(error)}"
        if self.settings.required:
            # a server that is down may be up at the Job's next try; a refusal stays a refusal
            raise RunFailure(TRACKING_UNAVAILABLE, message, permanent=False) from error
        self.unavailable = message

    def start(self) -> None:
        """Reach the server, find or create the experiment, create the run (before fitting)."""
        settings = self.settings
        if settings is None:
            return
        _bound_the_client()
        try:
            from mlflow import MlflowClient
        except ImportError as e:
            self._failed("the mlflow client is not installed (the tracking extra)", e)
            return
        self._client = client = MlflowClient(tracking_uri=settings.tracking_uri)
        try:
            self.experiment_id = _experiment(client, settings.experiment)
            run = client.create_run(
                self.experiment_id,
                run_name=settings.run_name or self.identity.training_job or self.identity.model,
                tags=self.identity.tags(),
            )
        except Exception as e:
            self._failed(f"cannot start a run in experiment {settings.experiment!r}", e)
            return
        self.run_id = run.info.run_id

    def log(
        self,
        spec: TrainingJobSpec,
        metrics: Mapping[str, float],
        dataset: Any,
        dataset_digest: str | None,
        model: Any,
        columns: list[Column],
        sha256: str,
    ) -> None:
        """Parameters, held-out metrics, the dataset (the rows trained and tested on, its URI and
        digest), the model with its signature, and its version in the registry."""
        if not self.active:
            return
        assert self.settings is not None and self.run_id is not None
        try:
            self._log(spec, metrics, dataset, dataset_digest, model, columns, sha256)
        except Exception as e:
            self._failed(f"cannot log run {self.run_id}", e)
            self._end("FAILED")
            return
        self._end("FINISHED")

    def _log(
        self,
        spec: TrainingJobSpec,
        metrics: Mapping[str, float],
        dataset: Any,
        dataset_digest: str | None,
        model: Any,
        columns: list[Column],
        sha256: str,
    ) -> None:
        import mlflow
        import mlflow.sklearn
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import Metric, Param, RunTag

        assert self.settings is not None and self.run_id is not None
        client, run_id, now = self._client, self.run_id, int(time.time() * 1000)
        tags = {"mlkube.dataset.uri": spec.dataset.describe()}
        if dataset_digest:
            tags["mlkube.dataset.digest"] = dataset_digest
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params(spec).items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        mlflow.set_tracking_uri(self.settings.tracking_uri)  # the fluent API's, for log_model
        with mlflow.start_run(run_id=run_id):
            mlflow.log_input(
                from_pandas(dataset, targets=spec.target, name=spec.dataset.describe()[:500]),
                context="training",
            )
            info = mlflow.sklearn.log_model(
                model,
                name=MODEL_NAME,
                signature=signature(columns),
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
                pip_requirements=_requirements(),
                metadata={"mlkube.sha256": sha256, **self.identity.tags()},
                registered_model_name=self.settings.registered_model,
            )
        if self.settings.registered_model and info.registered_model_version is not None:
            self.registered_version = str(info.registered_model_version)
            # the version's run has every tag; these say which cluster object it is
            tags = self.identity.tags()
            for key in ("mlkube.namespace", "mlkube.modelVersion"):
                client.set_model_version_tag(
                    self.settings.registered_model, self.registered_version, key, tags[key]
                )

    def fail(self, failure: RunFailure) -> None:
        """The training failed after its run started: the run ends FAILED, with the reason."""
        if not self.active or self.run_id is None:
            return
        from mlflow.entities import RunTag

        tags = [RunTag("mlkube.reason", failure.reason), RunTag("mlkube.message", failure.message)]
        with contextlib.suppress(Exception):  # the training's own failure is the one reported
            self._client.log_batch(self.run_id, tags=tags)
        self._end("FAILED")

    def _end(self, status: str) -> None:
        if self.run_id is None:
            return
        try:
            self._client.set_terminated(self.run_id, status)
        except Exception as e:
            if status == "FINISHED":
                self._failed(f"cannot end run {self.run_id}", e)

    def result(self) -> dict[str, Any] | None:
        """What the operator records (status.tracking, the ModelVersion's lineage.mlflow), or
        why the run is not tracked; None without tracking."""
        settings = self.settings
        if settings is None:
            return None
        if self.unavailable is not None:
            return {"unavailable": self.unavailable}
        assert self.experiment_id is not None and self.run_id is not None
        found: dict[str, Any] = {
            "trackingUri": settings.tracking_uri,
            "experimentId": self.experiment_id,
            "runId": self.run_id,
            "runUrl": run_url(settings.tracking_uri, self.experiment_id, self.run_id),
        }
        if settings.registered_model and self.registered_version:
            found["registeredModel"] = settings.registered_model
            found["registeredVersion"] = self.registered_version
        if settings.credentials_secret:  # a Deployment sets the version's aliases with it
            found["credentialsSecret"] = settings.credentials_secret
        return found


def _bound_the_client() -> None:
    for name, value in {**CLIENT_BOUNDS, **QUIET}.items():
        os.environ.setdefault(name, value)


def sync_aliases(
    tracking_uri: str, registered_model: str, set_: Mapping[str, str], delete: Sequence[str]
) -> dict[str, Any]:
    """Converge aliases of `registered_model` in MLflow's registry: each alias of `set_` on its
    version (MLflow moves one held by another version at once), each of `delete` removed (one
    absent, or a registered model gone, has nothing to remove). Setting what is set is harmless.

    Returns the result `{"status": "Synced", "set": ..., "deleted": ...}`. Raises RunFailure:
    TrackingUnavailable (the server not reached, the credentials refused) or AliasRefused (the
    server refused the request: a version that does not exist, a bad alias). REST API:
    registered-models/alias, POST and DELETE (mlflow.org/docs/latest/rest-api)."""
    _bound_the_client()
    where = f"tracking.mlflow: cannot set aliases of {registered_model!r} at {tracking_uri}"
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError as e:
        raise RunFailure(
            TRACKING_UNAVAILABLE, f"{where}: the mlflow client is not installed"
        ) from e
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        for alias, version in sorted(set_.items()):
            client.set_registered_model_alias(registered_model, alias, version)
        for alias in delete:
            try:
                client.delete_registered_model_alias(registered_model, alias)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
    except Exception as e:
        refused = getattr(e, "error_code", None) in REFUSALS
        reason = ALIAS_REFUSED if refused else TRACKING_UNAVAILABLE
        raise RunFailure(reason, f"{where}: {_why(e)}", permanent=refused) from e
    return {"status": "Synced", "set": dict(set_), "deleted": list(delete)}


def _experiment(client: Any, name: str) -> str:
    """The experiment's id, created when it does not exist (another training may create it at
    the same instant: then the one that exists)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return str(client.get_experiment_by_name(name).experiment_id)


def signature(columns: list[Column]) -> Any:
    """The model's MLflow signature from the input schema: one column per feature, typed, a
    nullable one not required."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec(SCHEMA_TYPES[c.type], c.name, required=not c.nullable) for c in columns]
        )
    )


def _requirements() -> list[str]:
    """Pinned as trained; given, so MLflow does not infer them by loading the model again."""
    import pandas
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}", f"pandas=={pandas.__version__}"]


def _why(error: BaseException) -> str:
    """MLflow's error in a status line: its error code and the cause, not the request's URL."""
    code = getattr(error, "error_code", None)
    text = one_line(error)
    if "Max retries exceeded" in text or "Caused by" in text:
        cause = text.rsplit("Caused by ", 1)[-1]
        text = f"cannot connect ({cause.strip('()')[:300]})"
    elif code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        text = f"{code}: {str(error).splitlines()[0][:300]} (credentialsSecret's username/password or token)"
    return text
