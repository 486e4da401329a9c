"""What a new user's CSV does to `mlkube-runtime train`: every fault ends in a named reason and a
one-line message, and every allowlisted estimator trains on every dataset the data tests accept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlkube.api.trainingjob import TrainingJobSpec
from mlkube.estimators import ESTIMATORS
from mlkube.runtime import artifacts
from mlkube.runtime.outcome import EXIT_PERMANENT, EXIT_TRANSIENT, RunFailure
from mlkube.runtime.train import TrainRequest, train

pytestmark = pytest.mark.runtime

PLANS = [f"plan-{i}" for i in range(12)]  # a dozen categories: one-hot output turns sparse


def churn(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """A customer table as people export it: numbers, a dozen plan names, a yes/no flag."""
    rng = np.random.default_rng(seed)
    fee = rng.uniform(10, 100, rows).round(2)
    tenure = rng.integers(1, 72, rows)
    plan = rng.choice(PLANS, rows)
    paperless = rng.choice([True, False], rows)
    churned = (fee / 100 - tenure / 72 + rng.normal(0, 0.3, rows)) > 0
    return pd.DataFrame(
        {
            "monthly_fee": fee,
            "tenure_months": tenure,
            "plan": plan,
            "paperless": paperless,
            "churned": np.where(churned, "yes", "no"),
            "spend": fee * tenure,
        }
    )


def write_csv(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return f"file://{path}"


def spec(uri: str, estimator: str, target: str = "churned", **extra: Any) -> TrainingJobSpec:
    features = ["monthly_fee", "tenure_months", "plan", "paperless"]
    return TrainingJobSpec.model_validate(
        {
            "model": "churn",
            "dataset": {"uri": uri},
            "target": target,
            "features": features,
            "estimator": {"className": estimator},
            **extra,
        }
    )


def run(tmp_path: Path, s: TrainingJobSpec) -> dict[str, Any]:
    return train(
        TrainRequest(spec=s, artifact_root=str(tmp_path / "store"), namespace="ns", version=1)
    )


def refused(tmp_path: Path, s: TrainingJobSpec) -> RunFailure:
    with pytest.raises(RunFailure) as caught:
        run(tmp_path, s)
    return caught.value


def cli(
    tmp_path: Path, s: TrainingJobSpec, root: str | None = None
) -> tuple[int, dict[str, Any], str]:
    """`mlkube-runtime train` as a pod runs it: exit code, termination message, stderr."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"kind": "TrainingJob", "spec": s.to_api()}))
    result_file = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "mlkube.runtime.cli", "train", "--spec", str(spec_file),
         "--artifact-root", root or str(tmp_path / "store"), "--result-file", str(result_file)],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.returncode, json.loads(result_file.read_text()), done.stderr


HGB = "sklearn.ensemble.HistGradientBoostingClassifier"
LOGISTIC = "sklearn.linear_model.LogisticRegression"


def test_a_stray_word_in_a_numeric_column_names_the_column_and_row(tmp_path: Path) -> None:
    """Item 1: `abc` in one row of a fee column is a data error, not 600 categories."""
    frame = churn()
    frame["monthly_fee"] = frame["monthly_fee"].astype(object)
    frame.loc[417, "monthly_fee"] = "abc"
    failure = refused(tmp_path, spec(write_csv(tmp_path, frame), HGB))
    assert failure.reason == "DataValidationFailed"
    assert "'monthly_fee' must be float, but row 417 holds 'abc'" in failure.message


def test_declared_column_types_missing_values_and_categories_are_checked(tmp_path: Path) -> None:
    frame = churn()
    frame["tenure_months"] = frame["tenure_months"].astype(float)
    frame.loc[5, "tenure_months"] = 2.5
    uri = write_csv(tmp_path, frame)
    columns = [{"name": "tenure_months", "type": "int"}]
    failure = refused(tmp_path, spec(uri, HGB, dataTests={"columns": columns}))
    assert "'tenure_months' must be int, but row 5 holds 2.5" in failure.message

    frame = churn()
    frame.loc[9, "plan"] = "plan-99"
    frame.loc[30, "monthly_fee"] = None
    uri = write_csv(tmp_path, frame)
    columns = [{"name": "plan", "type": "string", "values": PLANS}]
    failure = refused(
        tmp_path, spec(uri, HGB, dataTests={"maxMissingPercent": 10, "columns": columns})
    )
    assert "'plan' holds 'plan-99' in row 9" in failure.message

    columns = [{"name": "monthly_fee", "allowMissing": False}]
    failure = refused(
        tmp_path, spec(uri, HGB, dataTests={"maxMissingPercent": 10, "columns": columns})
    )
    assert "'monthly_fee' has a missing value in row 30" in failure.message


def test_a_numeric_looking_code_column_can_be_declared_a_string(tmp_path: Path) -> None:
    frame = churn()
    frame["plan"] = [str(i % 12) for i in range(len(frame))]
    frame.loc[3, "plan"] = "12b"
    uri = write_csv(tmp_path, frame)
    assert "declare it in dataTests.columns" in refused(tmp_path, spec(uri, HGB)).message
    result = run(
        tmp_path, spec(uri, HGB, dataTests={"columns": [{"name": "plan", "type": "string"}]})
    )
    assert ["plan", "string"] in result["columns"]


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_allowlisted_estimator_trains_on_categorical_and_missing_data(
    tmp_path: Path, estimator: str
) -> None:
    """Item 2: a dozen categories, a bool column and missing values, for every estimator."""
    frame = churn(rows=300)
    frame.loc[::25, "monthly_fee"] = None
    frame.loc[3::25, "plan"] = None
    target = "churned" if ESTIMATORS[estimator] == "classification" else "spend"
    s = spec(write_csv(tmp_path, frame), estimator, target, dataTests={"maxMissingPercent": 10})
    if "HistGradientBoosting" in estimator:
        s.estimator.hyperparameters = {"max_iter": 20}  # seconds, not half a minute, on 2 cores
    result = run(tmp_path, s)
    assert result["status"] == "Succeeded"
    assert ["monthly_fee", "float", True] in result["columns"]


def test_a_class_with_one_member_is_a_data_error_naming_the_class(tmp_path: Path) -> None:
    """Item 3: not a traceback and a retry, but DataValidationFailed, exit 3."""
    frame = churn()
    frame.loc[7, "churned"] = "maybe"
    code, result, stderr = cli(tmp_path, spec(write_csv(tmp_path, frame), LOGISTIC))
    assert code == EXIT_PERMANENT
    assert result["reason"] == "DataValidationFailed"
    assert "class 'maybe' of target 'churned' has only 1 member" in result["message"]
    assert "Traceback" not in stderr


def test_a_failing_fit_is_one_line_and_permanent(tmp_path: Path) -> None:
    """Item 4: the estimator's own error, first line only, exit 3."""
    s = spec(write_csv(tmp_path, churn()), LOGISTIC)
    s.estimator.hyperparameters = {"solver": "liblinear", "penalty": "elasticnet"}
    code, result, stderr = cli(tmp_path, s)
    assert (code, result["reason"]) == (EXIT_PERMANENT, "TrainingFailed")
    assert result["message"].startswith("estimator sklearn.linear_model.LogisticRegression: ")
    assert "\n" not in result["message"] and "Traceback" not in stderr


def test_an_unwritable_store_is_one_line_and_retried(tmp_path: Path) -> None:
    """Item 4: a store error may pass, so the pod exits 1 and the Job retries."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    code, result, _ = cli(tmp_path, spec(write_csv(tmp_path, churn()), LOGISTIC), root=str(blocker))
    assert (code, result["reason"]) == (EXIT_TRANSIENT, "ArtifactStoreError")
    assert "\n" not in result["message"]


def test_missing_values_are_imputed_by_preprocessing_fitted_on_the_training_split(
    tmp_path: Path,
) -> None:
    """Item 5: LogisticRegression with maxMissingPercent 10 trains; the transform is stored."""
    frame = churn()
    frame.loc[::20, "monthly_fee"] = None
    uri = write_csv(tmp_path, frame)
    preprocessing = {"numeric": {"impute": "Median", "scale": "Standard"}}
    result = run(
        tmp_path,
        spec(uri, LOGISTIC, dataTests={"maxMissingPercent": 10}, preprocessing=preprocessing),
    )
    model: Any = artifacts.load_verified_model(result["artifactUri"])
    numeric = model.named_steps["preprocess"].named_transformers_["numeric"]
    # the reference sample is the whole training split here (fewer than 5000 rows)
    train_split = pd.read_parquet(
        Path(result["artifactUri"].removeprefix("file://")) / "reference.parquet"
    )
    assert len(train_split) == 480
    medians = train_split[["monthly_fee", "tenure_months"]].median()
    np.testing.assert_allclose(numeric.named_steps["impute"].statistics_, medians)
    assert ["monthly_fee", "float", True] in result["columns"]
    assert ["tenure_months", "int", True] in result["columns"]


def test_no_imputation_for_an_estimator_that_cannot_take_missing_values_is_refused(
    tmp_path: Path,
) -> None:
    frame = churn()
    frame.loc[::20, "monthly_fee"] = None
    s = spec(write_csv(tmp_path, frame), LOGISTIC, dataTests={"maxMissingPercent": 10},
             preprocessing={"numeric": {"impute": "None"}})  # fmt: skip
    failure = refused(tmp_path, s)
    assert failure.reason == "DataValidationFailed"
    assert "preprocessing.numeric.impute" in failure.message
    # HistGradientBoosting takes NaN itself
    s.estimator.class_name = HGB
    s.estimator.hyperparameters = {"max_iter": 20}
    assert run(tmp_path, s)["status"] == "Succeeded"
