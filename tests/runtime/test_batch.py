"""The batch worker on real files: shards of a prefix of Parquet and CSV files scored by a real
model into parts and a manifest; a row the model cannot take fails its shard alone, naming the
file, column and row; a retried shard overwrites its part; the S3 store works the same."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from mlkube.api.batchprediction import BatchPredictionSpec
from mlkube.contract import SHARD_ATTEMPT_ENV
from mlkube.runtime import artifacts, batch
from mlkube.runtime.cli import main
from mlkube.runtime.outcome import EXIT_PERMANENT, RunFailure
from tests.runtime.servers import IRIS_FEATURES, IrisArtifact, save_iris_artifact

pytestmark = pytest.mark.runtime

RUN = "run-1"


@pytest.fixture
def model(tmp_path: Path) -> IrisArtifact:
    return save_iris_artifact(tmp_path / "model")


def scoring(model: IrisArtifact) -> batch.Scoring:
    return batch.Scoring("iris-v1", str(model.directory), model.sha256)


def iris_rows(model: IrisArtifact) -> pd.DataFrame:
    frame = model.features.copy()
    frame.insert(0, "customer", [f"c-{i:03d}" for i in range(len(frame))])
    return frame


def write_inputs(model: IrisArtifact, folder: Path) -> pd.DataFrame:
    """150 rows over three files of two formats: a.parquet (60, row groups of 16), b.csv (40),
    c.parquet (50); plus files a prefix read skips."""
    frame = iris_rows(model)
    folder.mkdir()
    frame.iloc[:60].to_parquet(folder / "a.parquet", row_group_size=16)
    frame.iloc[60:100].to_csv(folder / "b.csv", index=False)
    frame.iloc[100:].to_parquet(folder / "c.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / "notes.txt").write_text("not an input")
    return frame


def spec_for(tmp_path: Path, **extra: Any) -> BatchPredictionSpec:
    return BatchPredictionSpec.model_validate(
        {
            "modelVersion": "iris-v1",
            "input": {"uri": f"file://{tmp_path}/in/"},
            "output": {"uri": f"file://{tmp_path}/out/", "idColumn": "customer"},
            "rowsPerShard": 40,
            "batchSize": 16,
            **extra,
        }
    )


def read_output(uri: str) -> pd.DataFrame:
    fs, path = fsspec.core.url_to_fs(uri)
    return ds.dataset(path, format="parquet", filesystem=fs).to_table().to_pandas()


def test_every_shard_writes_one_part_of_its_rows_and_the_manifest_counts_them(
    tmp_path: Path, model: IrisArtifact
) -> None:
    frame = write_inputs(model, tmp_path / "in")
    spec = spec_for(tmp_path)
    planned = batch.plan(spec, RUN)
    assert planned == {
        "status": "Planned", "files": 3, "rows": 150, "shards": 4,
        "bytes": planned["bytes"],
    }  # fmt: skip
    for shard in range(4):
        done = batch.score_shard(spec, RUN, shard, scoring(model))
        assert (done["status"], done["rowsIn"], done["rowsOut"]) == (
            "Succeeded", min(40, 150 - 40 * shard), min(40, 150 - 40 * shard),
        )  # fmt: skip
    written = batch.write_manifest(spec, RUN, "iris-v1", model.sha256)
    assert (written["succeeded"], written["failed"], written["rowsOut"]) == (4, 0, 150)

    parts = sorted(p.name for p in (tmp_path / "out").glob("part-*"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(4)]
    out = read_output(spec.output.uri)
    assert list(out.columns) == ["customer", "prediction", "probability_0", "probability_1",
                                 "probability_2"]  # fmt: skip
    assert out["customer"].tolist() == frame["customer"].tolist(), "every row once, in order"
    expected = model.estimator.predict_proba(frame[IRIS_FEATURES])
    np.testing.assert_allclose(out[["probability_0", "probability_1", "probability_2"]], expected)
    assert (out["prediction"] == model.estimator.predict(frame[IRIS_FEATURES])).all()
    part = pq.read_schema(tmp_path / "out/part-00000.parquet").metadata
    assert part[b"mlkube.model_version"] == b"iris-v1"
    assert json.loads(part[b"mlkube.classes"]) == [0, 1, 2]

    manifest = json.loads((tmp_path / "out/_manifest.json").read_text())
    assert (manifest["modelVersion"], manifest["sha256"]) == ("iris-v1", model.sha256)
    assert [(s["shard"], s["rowsIn"], s["rowsOut"], s["part"]) for s in manifest["shards"]] == [
        (i, min(40, 150 - 40 * i), min(40, 150 - 40 * i), f"part-{i:05d}.parquet") for i in range(4)
    ]
    assert all(s["seconds"] >= 0 and s["startedAt"] <= s["finishedAt"] for s in manifest["shards"])
    assert [f["uri"].rsplit("/", 1)[1] for f in manifest["files"]] == [
        "a.parquet", "b.csv", "c.parquet",
    ], "in name order; _SUCCESS and notes.txt skipped"  # fmt: skip


def test_without_an_id_column_the_inputs_are_kept_beside_the_prediction(
    tmp_path: Path, model: IrisArtifact
) -> None:
    frame = write_inputs(model, tmp_path / "in")
    spec = spec_for(tmp_path, output={"uri": f"file://{tmp_path}/out"}, rowsPerShard=1000)
    result = batch.run_local(spec, RUN, scoring(model), parallelism=1)
    assert (result["succeeded"], result["failures"]) == (1, [])
    out = read_output(spec.output.uri)
    assert list(out.columns)[:4] == IRIS_FEATURES
    pd.testing.assert_frame_equal(out[IRIS_FEATURES], frame[IRIS_FEATURES])


def test_a_bad_row_fails_its_shard_for_good_naming_file_column_and_row(
    tmp_path: Path, model: IrisArtifact
) -> None:
    frame = write_inputs(model, tmp_path / "in")
    bad = frame.iloc[60:100].astype({"petal_width": object})
    bad.iloc[27, bad.columns.get_loc("petal_width")] = "wide"  # b.csv row 27: shard 2 (rows 80-119)
    bad.to_csv(tmp_path / "in/b.csv", index=False)
    spec = spec_for(tmp_path)
    result = batch.run_local(spec, RUN, scoring(model), parallelism=2)

    (failure,) = result["failures"]
    assert (failure["shard"], failure["reason"]) == (2, "InputSchemaMismatch")
    assert failure["message"] == (
        f"file://{tmp_path}/in/b.csv: column 'petal_width' must be float, got string 'wide' "
        "in row 27"
    )
    assert (result["succeeded"], result["failed"], result["rowsOut"]) == (3, 1, 110)
    parts = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("part-"))
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00003.parquet"], (
        "the good shards' parts are whole; the bad one left nothing, not even a temporary file"
    )
    manifest = json.loads((tmp_path / "out/_manifest.json").read_text())
    assert manifest["shards"][2]["status"] == "Failed"
    assert manifest["shards"][2]["message"] == failure["message"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(sepal_length=f.sepal_length.mask(f.index == 125)),
         "c.parquet: column 'sepal_length' must be float, got null in row 25: the model was not "
         "trained to take missing values there"),
        (lambda f: f.drop(columns="sepal_width"),
         "c.parquet: the model's input column 'sepal_width' is not in the file (its columns: "
         "customer, sepal_length, petal_length, petal_width)"),
        (lambda f: f.drop(columns="customer"),
         "c.parquet: spec.output.idColumn 'customer' is not in the file"),
        (lambda f: f.assign(petal_length=f.petal_length.astype(str)),
         "c.parquet: column 'petal_length' must be float, got string '5.7' in row 20"),
    ],
    ids=["null", "missing column", "missing id column", "text for numbers"],
)  # fmt: skip
def test_parquet_schema_errors_name_the_column_and_row(
    tmp_path: Path, model: IrisArtifact, change: Any, message: str
) -> None:
    """What a shard finds, should a file change after the plan read it (or the plan run without
    the model's schema, as this one does)."""
    frame = write_inputs(model, tmp_path / "in")
    batch.plan(spec_for(tmp_path), RUN)
    change(frame.iloc[100:]).to_parquet(tmp_path / "in/c.parquet")
    spec = spec_for(tmp_path)
    with pytest.raises(RunFailure) as failed:
        batch.score_shard(spec, RUN, 3, scoring(model))  # rows 120-149: c.parquet 20-49
    assert failed.value.reason == "InputSchemaMismatch"
    assert failed.value.permanent
    assert message in failed.value.message


def test_a_retried_shard_overwrites_its_part_and_never_duplicates_rows(
    tmp_path: Path, model: IrisArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_inputs(model, tmp_path / "in")
    spec = spec_for(tmp_path)
    batch.plan(spec, RUN)
    batch.score_shard(spec, RUN, 1, scoring(model))
    first = pq.read_table(tmp_path / "out/part-00001.parquet")
    # a killed attempt left half a part behind; the Job controller starts the index again
    (tmp_path / "out/part-00001.parquet.tmp").write_bytes(b"PAR1 half a part")
    monkeypatch.setenv(next(iter(SHARD_ATTEMPT_ENV.values())), "1")
    again = batch.score_shard(spec, RUN, 1, scoring(model))
    monkeypatch.delenv(next(iter(SHARD_ATTEMPT_ENV.values())))
    assert again["rowsOut"] == 40
    assert pq.read_table(tmp_path / "out/part-00001.parquet").equals(first)
    for shard in (0, 2, 3):
        batch.score_shard(spec, RUN, shard, scoring(model))
    (tmp_path / "out/part-00002.parquet.tmp").write_bytes(b"left by a pod killed mid-write")
    batch.write_manifest(spec, RUN, "iris-v1", model.sha256)

    assert not list((tmp_path / "out").glob("*.tmp")), "the manifest step removes leftovers"
    out = read_output(spec.output.uri)
    assert len(out) == 150 and out["customer"].is_unique
    manifest = json.loads((tmp_path / "out/_manifest.json").read_text())
    assert [s["attempt"] for s in manifest["shards"]] == [1, 2, 1, 1]


def test_an_output_another_run_wrote_is_refused(tmp_path: Path, model: IrisArtifact) -> None:
    write_inputs(model, tmp_path / "in")
    spec = spec_for(tmp_path)
    batch.plan(spec, RUN)
    assert batch.plan(spec, RUN)["shards"] == 4, "the same run plans again (a retried pod)"
    with pytest.raises(RunFailure) as taken:
        batch.plan(spec, "another-run")
    assert taken.value.reason == "OutputInUse"
    assert taken.value.message.startswith(f"spec.output.uri: file://{tmp_path}/out/ holds")


def test_an_earlier_unfinished_run_of_the_same_name_is_named_as_such_and_not_mixed_in(
    tmp_path: Path, model: IrisArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BatchPrediction deleted mid-run and applied again is a new run (a new uid): it is told
    the parts are its predecessor's, unfinished, and how to clear them; never mixed, never
    deleted for it."""
    write_inputs(model, tmp_path / "in")
    spec = spec_for(tmp_path)
    monkeypatch.setenv("MLKUBE_BATCHPREDICTION", "bp-big")
    batch.plan(spec, "uid-1")
    batch.score_shard(spec, "uid-1", 0, scoring(model))  # then deleted: no manifest
    with pytest.raises(RunFailure) as again:
        batch.plan(spec, "uid-2")
    assert (again.value.reason, again.value.permanent) == ("OutputInUse", True)
    assert again.value.message == (
        f"spec.output.uri: file://{tmp_path}/out/ holds the output of an earlier run of bp-big "
        "(run uid-1, since deleted), which did not finish (no _manifest.json: deleted or failed "
        "mid-run): choose another output.uri, or delete the directory's part-*.parquet, "
        "_manifest.json and _mlkube/ to score there again; a run never mixes its parts with "
        "another run's, nor deletes them"
    )
    assert (tmp_path / "out/part-00000.parquet").exists(), "the user's data is never deleted"

    batch.write_manifest(spec, "uid-1", "iris-v1", model.sha256)
    with pytest.raises(RunFailure, match=r"bp-big \(run uid-1, since deleted\), which finished "
                       r"\(_manifest.json is there\)"):  # fmt: skip
        batch.plan(spec, "uid-2")
    monkeypatch.setenv("MLKUBE_BATCHPREDICTION", "other-scores")
    with pytest.raises(
        RunFailure, match=r"holds the output of BatchPrediction bp-big \(run uid-1\)"
    ):
        batch.plan(spec, "uid-3")

    for leftover in [*(tmp_path / "out").glob("part-*.parquet"), tmp_path / "out/_manifest.json"]:
        leftover.unlink()
    shutil.rmtree(tmp_path / "out/_mlkube")
    assert batch.plan(spec, "uid-3")["shards"] == 4, "cleared as the message says: it runs"


def test_a_tampered_model_is_refused_before_any_row_is_scored(
    tmp_path: Path, model: IrisArtifact
) -> None:
    write_inputs(model, tmp_path / "in")
    spec = spec_for(tmp_path)
    batch.plan(spec, RUN)
    artifacts.write_bytes(str(model.directory / artifacts.MODEL_FILE), b"not the model")
    with pytest.raises(RunFailure) as refused:
        batch.score_shard(spec, RUN, 0, scoring(model))
    assert refused.value.reason == "ArtifactError"
    assert "tampered" in refused.value.message
    assert not list((tmp_path / "out").glob("part-*"))


def test_no_input_and_too_many_shards_are_refused_at_planning(
    tmp_path: Path, model: IrisArtifact
) -> None:
    with pytest.raises(RunFailure) as absent:
        batch.plan(spec_for(tmp_path), RUN)
    assert (absent.value.reason, absent.value.message) == (
        "InputNotFound",
        f"spec.input.uri: file://{tmp_path}/in/ does not exist (no file or directory of that name)",
    )
    prefix = spec_for(tmp_path, input={"uri": f"file://{tmp_path}/scoring-2026"})
    with pytest.raises(RunFailure, match=r"scoring-2026 does not exist .*nor any file whose name "
                       r"starts with it"):  # fmt: skip
        batch.plan(prefix, RUN)
    (tmp_path / "in").mkdir()
    (tmp_path / "in/notes.txt").write_text("not an input")
    with pytest.raises(RunFailure, match="holds no Parquet or CSV file") as empty:
        batch.plan(spec_for(tmp_path), RUN)
    assert empty.value.reason == "InputNotFound"
    write_inputs(model, tmp_path / "more")
    many = spec_for(tmp_path, input={"uri": f"file://{tmp_path}/more/"}, rowsPerShard=1)
    original, batch.MAX_SHARDS = batch.MAX_SHARDS, 100
    try:
        with pytest.raises(RunFailure, match="raise rowsPerShard to at least 2") as too_many:
            batch.plan(many, RUN)
    finally:
        batch.MAX_SHARDS = original
    assert too_many.value.reason == "TooManyShards"


def test_the_shard_command_reports_through_its_result_file_and_exit_code(
    tmp_path: Path, model: IrisArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the pod does: the spec from the environment, the shard from JOB_COMPLETION_INDEX,
    the result in the termination message, exit 3 (the Job fails the index at once) on a bad
    row."""
    frame = write_inputs(model, tmp_path / "in")
    frame.iloc[100:].assign(petal_width=np.nan).to_parquet(tmp_path / "in/c.parquet")
    monkeypatch.setenv("MLKUBE_SPEC", spec_for(tmp_path).model_dump_json(by_alias=True))
    common = ["--spec", "env:MLKUBE_SPEC", "--run-id", RUN]
    model_args = ["--model-version", "iris-v1", "--sha256", model.sha256]
    assert main(["batch", "plan", *common, "--result-file", str(tmp_path / "plan.json")]) == 0
    assert json.loads((tmp_path / "plan.json").read_text())["shards"] == 4
    shard = [*common, *model_args, "--model-uri", str(model.directory)]
    result = tmp_path / "result.json"
    assert main(["batch", "shard", *shard, "--shard", "0", "--result-file", str(result)]) == 0
    assert json.loads(result.read_text())["rowsOut"] == 40
    code = main(["batch", "shard", *shard, "--shard", "3", "--result-file", str(result)])
    assert code == EXIT_PERMANENT
    failed = json.loads(result.read_text())
    assert failed["reason"] == "InputSchemaMismatch"
    assert "column 'petal_width' must be float, got null in row 20" in failed["message"]
    assert len(result.read_text()) < 4096, "fits a termination message"


@pytest.mark.usefixtures("s3_server")
def test_the_s3_store_reads_a_prefix_and_writes_parts_and_manifest(
    s3_root: str, tmp_path: Path, model: IrisArtifact
) -> None:
    frame = write_inputs(model, tmp_path / "in")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for name in ("a.parquet", "b.csv", "c.parquet", "_SUCCESS"):
        fs.put(str(tmp_path / "in" / name), f"{s3_root}/ns/in/{name}".removeprefix("s3://"))
    output = f"{s3_root}/ns/scores-{uuid.uuid4().hex[:6]}"
    spec = spec_for(tmp_path, input={"uri": f"{s3_root}/ns/in/"}, output={"uri": output,
                    "idColumn": "customer"})  # fmt: skip
    result = batch.run_local(spec, RUN, scoring(model), parallelism=2)
    assert (result["succeeded"], result["rowsOut"]) == (4, 150)
    out = read_output(output)
    assert sorted(out["customer"]) == sorted(frame["customer"])
    names = {p.rsplit("/", 1)[1] for p in fs.ls(output.removeprefix("s3://"), refresh=True)}
    assert names == {*(f"part-{i:05d}.parquet" for i in range(4)), "_manifest.json", "_mlkube"}


# -- what the plan refuses before any shard runs --------------------------------------------------


def plan_failure(spec: BatchPredictionSpec, model: IrisArtifact) -> RunFailure:
    with pytest.raises(RunFailure) as failed:
        batch.plan(spec, RUN, str(model.directory))
    return failed.value


def test_an_id_column_missing_from_a_csv_is_refused_at_planning_naming_the_field_and_file(
    tmp_path: Path, model: IrisArtifact
) -> None:
    write_inputs(model, tmp_path / "in")
    spec = spec_for(tmp_path, output={"uri": f"file://{tmp_path}/out/", "idColumn": "customer_id"})
    failure = plan_failure(spec, model)
    assert (failure.reason, failure.permanent) == ("InputSchemaMismatch", True)
    assert failure.message == (
        f"file://{tmp_path}/in/a.parquet: spec.output.idColumn 'customer_id' is not in the file "
        "(its columns: customer, sepal_length, sepal_width, petal_length, petal_width)"
    )
    only_csv = spec.model_copy(update={"input": spec.input.model_copy(
        update={"uri": f"file://{tmp_path}/in/b.csv"})})  # fmt: skip
    assert plan_failure(only_csv, model).message.startswith(
        f"file://{tmp_path}/in/b.csv: spec.output.idColumn 'customer_id' is not in the file"
    ), "a CSV's header line is read as a Parquet footer is"
    assert not (tmp_path / "out/_mlkube/plan.json").exists(), "no plan, so no shard"


def test_a_csv_missing_the_id_column_fails_its_shard_for_good_naming_it(
    tmp_path: Path, model: IrisArtifact
) -> None:
    """The shard's own check, should the file change after planning: a schema fault, never a
    transient store error (which the Job would retry three times)."""
    frame = write_inputs(model, tmp_path / "in")
    spec = spec_for(tmp_path)
    batch.plan(spec, RUN, str(model.directory))
    frame.iloc[60:100].drop(columns=["customer", "petal_width"]).to_csv(
        tmp_path / "in/b.csv", index=False
    )
    with pytest.raises(RunFailure) as failed:
        batch.score_shard(spec, RUN, 1, scoring(model))  # rows 40-79: a.parquet and b.csv
    assert (failed.value.reason, failed.value.permanent) == ("InputSchemaMismatch", True)
    assert failed.value.message == (
        f"file://{tmp_path}/in/b.csv: spec.output.idColumn 'customer' and the model's input "
        "column 'petal_width' are not in the file (its columns: sepal_length, sepal_width, "
        "petal_length)"
    )


def test_a_file_without_the_models_columns_is_refused_at_planning_naming_them_all(
    tmp_path: Path, model: IrisArtifact
) -> None:
    frame = write_inputs(model, tmp_path / "in")
    frame.iloc[100:].drop(columns=["petal_width", "sepal_width"]).to_parquet(
        tmp_path / "in/c.parquet"
    )
    failure = plan_failure(spec_for(tmp_path), model)
    assert (failure.reason, failure.message) == (
        "InputSchemaMismatch",
        f"file://{tmp_path}/in/c.parquet: the model's input columns 'sepal_width', "
        "'petal_width' are not in the file (its columns: customer, sepal_length, petal_length)",
    )
    with pytest.raises(RunFailure, match="'sepal_width', 'petal_width' are not in the file"):
        batch.run_local(spec_for(tmp_path), RUN, scoring(model), parallelism=1)
    assert not list((tmp_path / "out").glob("part-*")), "no shard ran"


def test_a_ragged_csv_is_refused_at_planning_by_its_line_in_plain_words(
    tmp_path: Path, model: IrisArtifact
) -> None:
    frame = write_inputs(model, tmp_path / "in")
    lines = frame.iloc[60:100].to_csv(index=False).splitlines()
    lines[3] += ",extra,fields"  # line 4 of the file: the header is line 1
    (tmp_path / "in/b.csv").write_text("\n".join(lines) + "\n")
    failure = plan_failure(spec_for(tmp_path), model)
    assert (failure.reason, failure.permanent) == ("InvalidInput", True)
    assert failure.message == (
        f"spec.input.uri: file://{tmp_path}/in/b.csv is not valid Csv: line 4 has 7 fields where "
        f"the header has 5: {lines[3]}"
    )
    assert "Arrow" not in failure.message


def test_a_csv_whose_later_rows_change_type_still_plans(tmp_path: Path) -> None:
    """Counting reads values as text: a value past the first block that is not of the type
    Arrow would guess from the first block is the shards' to judge, by column and row."""
    (tmp_path / "in").mkdir()
    rows = [f"c-{i},{i}" for i in range(200_000)] + ["c-x,not a number"]
    (tmp_path / "in/ids.csv").write_text("customer,sepal_length\n" + "\n".join(rows) + "\n")
    planned = batch.plan(spec_for(tmp_path, rowsPerShard=100_000), RUN)
    assert (planned["rows"], planned["shards"]) == (200_001, 3)


@pytest.mark.usefixtures("s3_server")
def test_the_s3_store_refuses_a_missing_column_or_input_at_planning(
    s3_root: str, tmp_path: Path, model: IrisArtifact
) -> None:
    frame = write_inputs(model, tmp_path / "in")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    prefix = f"{s3_root}/ns/in"
    frame.iloc[:60].drop(columns="petal_width").to_parquet(tmp_path / "a.parquet")
    fs.put(str(tmp_path / "a.parquet"), f"{prefix}/a.parquet".removeprefix("s3://"))
    fs.put(str(tmp_path / "in/b.csv"), f"{prefix}/b.csv".removeprefix("s3://"))
    output = {"uri": f"{s3_root}/ns/out/", "idColumn": "customer_id"}
    spec = spec_for(tmp_path, input={"uri": f"{prefix}/"}, output=output)
    assert plan_failure(spec, model).message == (
        f"{prefix}/a.parquet: spec.output.idColumn 'customer_id' and the model's input column "
        "'petal_width' are not in the file (its columns: customer, sepal_length, sepal_width, "
        "petal_length)"
    )
    only_csv = spec_for(tmp_path, input={"uri": f"{prefix}/b.csv"}, output=output)
    assert plan_failure(only_csv, model).message.startswith(
        f"{prefix}/b.csv: spec.output.idColumn 'customer_id' is not in the file"
    )
    nowhere = spec_for(tmp_path, input={"uri": f"{s3_root}/ns/missing/"}, output=output)
    assert plan_failure(nowhere, model).message == (
        f"spec.input.uri: {s3_root}/ns/missing/ does not exist (no file or directory of that name)"
    )
