"""Batch prediction in a pod: plan the shards, score one shard, write the manifest.

The store layout of a run, under ``spec.output.uri``:

- ``part-NNNNN.parquet``: shard N's rows, in input order: the id column (``output.idColumn``) or
  the model's input columns as read, then ``prediction`` and, for classifiers with
  probabilities, ``probability_<class>`` per class (classes also in the file's metadata under
  ``mlkube.classes``). Written whole or not at all: through a temporary name and a rename on a
  file system, straight to its key on object storage (an upload appears only once complete). A
  retried shard writes the same part again, over the old one: never a second copy.
- ``_manifest.json``: every shard's rows in and out, attempt, timings and outcome, the model
  version and digest: what a reader checks before trusting the parts.
- ``_mlkube/plan.json`` (the files, their row counts, the shards) and ``_mlkube/shards/NNNNN.json``
  (each shard's record). Names starting with ``_`` are skipped by Parquet readers such as
  ``pyarrow.dataset`` and Spark, so the directory reads as one dataset of parts.

Shard i scores rows ``[i * rowsPerShard, (i + 1) * rowsPerShard)`` of the input files taken in
name order, as the plan counted them. Memory is bounded by ``batchSize`` rows: Parquet is read in
buffered pages, CSV in blocks, and the part is written batch by batch.

Every row is checked against the model's input schema with the checks serving runs
(``protocol.columns``: at C speed, value by value only to word the error); a row that fails is
a permanent failure of its shard naming the file, the column and the row (counted from 0 within
the file, the CSV header not counted).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import fsspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from mlkube.api.batchprediction import BatchPredictionSpec
from mlkube.api.modelversion import ColumnType
from mlkube.contract import BATCHPREDICTION_ENV, SHARD_ATTEMPT_ENV
from mlkube.layout import LOG_CLASSES_METADATA, join, with_scheme
from mlkube.runtime import artifacts
from mlkube.runtime.outcome import RunFailure, one_line
from mlkube.runtime.protocol.columns import check_types
from mlkube.runtime.protocol.dataplane import Predictor
from mlkube.runtime.protocol.errors import RequestError
from mlkube.runtime.protocol.settings import ServeConfigError

Format = Literal["Csv", "Parquet"]

MANIFEST_FILE = "_manifest.json"
PRIVATE_DIR = "_mlkube"
PLAN_FILE = f"{PRIVATE_DIR}/plan.json"
SHARDS_DIR = f"{PRIVATE_DIR}/shards"
PREDICTION_COLUMN = "prediction"
PROBABILITY_PREFIX = "probability_"
MAX_SHARDS = 10_000
"""Shards of one run; more is refused at planning (raise rowsPerShard)."""
PARQUET_BUFFER_BYTES = 1 << 20
"""Parquet column chunks are read through a buffer of this size, page by page, instead of a
whole row group at once (1M-row row groups of 20 float columns are 160 MB)."""
CSV_BLOCK_BYTES = (64 << 10, 64 << 20)
"""The smallest and largest CSV block read at once; within them, batchSize rows' worth."""
CSV_MISSING = pa.array(pacsv.ConvertOptions().null_values, pa.string())
"""Arrow's (and pandas') words for a missing value in a CSV cell: '', NA, NaN, null, ..."""
CSV_TYPES: dict[ColumnType, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "string": pa.string(),
    "bool": pa.bool_(),
}
MODEL_VERSION_METADATA = b"mlkube.model_version"
SHA256_METADATA = b"mlkube.sha256"
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def shard_record_name(shard: int) -> str:
    return f"{SHARDS_DIR}/{shard:05d}.json"


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(with_scheme(uri))
    return fs, path


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path `fs` returned, as a URI again."""
    return str(fs.unstrip_protocol(path))


# -- plan -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    uri: str
    format: Format
    rows: int
    bytes: int


@dataclass(frozen=True)
class Plan:
    run_id: str
    input: str
    output: str
    rows_per_shard: int
    files: list[InputFile]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def shards(self) -> int:
        return -(-self.rows // self.rows_per_shard)

    def ranges(self, shard: int) -> list[tuple[InputFile, int, int]]:
        """Shard `shard`'s rows as (file, first row, end row) within each file it touches."""
        start = shard * self.rows_per_shard
        end = min(start + self.rows_per_shard, self.rows)
        found, offset = [], 0
        for f in self.files:
            low, high = max(start, offset), min(end, offset + f.rows)
            if low < high:
                found.append((f, low - offset, high - offset))
            offset += f.rows
        return found

    def to_json(self) -> dict[str, Any]:
        """As ``plan.json`` holds it (camelCase, with the totals)."""
        return {
            "runId": self.run_id,
            "input": self.input,
            "output": self.output,
            "rowsPerShard": self.rows_per_shard,
            "rows": self.rows,
            "shards": self.shards,
            "files": [asdict(f) for f in self.files],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Plan:
        files = [
            InputFile(f["uri"], f["format"], int(f["rows"]), int(f["bytes"]))
            for f in value["files"]
        ]
        return cls(value["runId"], value["input"], value["output"], value["rowsPerShard"], files)


def _file_format(path: str, declared: str) -> Format | None:
    if declared in ("Csv", "Parquet"):
        return "Csv" if declared == "Csv" else "Parquet"
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "Parquet"
    return "Csv" if lower.endswith(CSV_SUFFIXES) else None


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def list_inputs(uri: str, declared: str) -> list[tuple[str, Format, int]]:
    """(URI, format, bytes) of the input: the file `uri` names, or the files directly under the
    directory (or key prefix) it names, in name order, skipping names starting with ``_`` or
    ``.`` and, with format Auto, names without a Parquet or CSV extension.

    Raises:
        RunFailure: InputNotFound when nothing is there (saying whether `uri` exists at all).
    """
    fs, path = _fs(uri)
    try:
        if uri.endswith("/") or fs.isdir(path):
            entries = fs.ls(path.rstrip("/"), detail=True)
            explicit = False
        elif fs.isfile(path):
            entries, explicit = [fs.info(path)], True
        else:  # a key prefix: the files whose names start with it
            folder, _, stem = path.rpartition("/")
            entries = [
                e
                for e in fs.ls(folder, detail=True)
                if e["name"].rsplit("/", 1)[-1].startswith(stem)
            ]
            explicit = False
    except FileNotFoundError:
        entries, explicit = [], False
    except OSError as e:
        raise RunFailure(
            "InputNotFound", f"spec.input.uri: cannot list {uri}: {one_line(e)}", permanent=False
        ) from e
    if not entries:
        raise RunFailure(
            "InputNotFound",
            f"spec.input.uri: {uri} does not exist (no file or directory of that name"
            + (")" if uri.endswith("/") else ", nor any file whose name starts with it)"),
        )
    found = []
    for entry in sorted(entries, key=lambda e: str(e["name"])):
        name = str(entry["name"])
        if entry.get("type") == "directory" or (not explicit and _hidden(name.rsplit("/", 1)[-1])):
            continue
        fmt = _file_format(name, declared) or ("Csv" if explicit else None)
        if fmt is not None:
            found.append((_unstrip(fs, name), fmt, int(entry.get("size") or 0)))
    if not found:
        raise RunFailure(
            "InputNotFound",
            f"spec.input.uri: {uri} holds no Parquet or CSV file"
            + ("" if declared != "Auto" else " (.parquet, .pq or .csv; or set input.format)"),
        )
    return found


def _open_parquet(uri: str) -> tuple[Any, pq.ParquetFile]:
    """(the open file, its Parquet reader): a local file through Arrow's own file (a fifth
    faster than through fsspec's Python one), object storage through fsspec."""
    fs, path = _fs(uri)
    handle = pa.OSFile(path) if isinstance(fs, LocalFileSystem) else fs.open(path, "rb")
    return handle, pq.ParquetFile(handle, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)


def arrow_message(error: pa.ArrowException) -> str:
    """Arrow's words without its class name: the first line of the text."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else "unreadable"


def inspect_file(uri: str, fmt: Format) -> tuple[int, list[str]]:
    """(rows, column names) of one input file. Parquet's footer says both. A CSV's header line
    names its columns and the file is read through once, in blocks, its first column only, as
    text (a value never fails a type Arrow guessed from earlier rows; a ragged row still fails).

    Raises:
        RunFailure: InvalidInput when the file is not valid Parquet or CSV (a ragged CSV row
        named by its line, counted from 1 with the header); StoreError (transient) when the
        store cannot be read.
    """
    ragged: list[Any] = []
    try:
        if fmt == "Parquet":
            handle, parquet = _open_parquet(uri)
            with handle:
                return int(parquet.metadata.num_rows), list(parquet.schema_arrow.names)
        names = csv_header(uri)
        with fsspec.open(with_scheme(uri), "rb", compression="infer") as f:
            reader = pacsv.open_csv(
                f,
                parse_options=_csv_parse(ragged),
                convert_options=pacsv.ConvertOptions(
                    include_columns=names[:1], column_types={names[0]: pa.string()}
                ),
            )
            return sum(b.num_rows for b in reader), names
    except pa.ArrowInvalid as e:
        problem = _ragged_row(uri, ragged[0]) if fmt == "Csv" and ragged else arrow_message(e)
        raise RunFailure(
            "InvalidInput", f"spec.input.uri: {uri} is not valid {fmt}: {problem}"
        ) from e
    except OSError as e:
        raise RunFailure(
            "StoreError", f"spec.input.uri: cannot read {uri}: {one_line(e)}", permanent=False
        ) from e


def csv_header(uri: str) -> list[str]:
    """The column names a CSV's header line gives (Arrow reads its first block only).

    Raises:
        pa.ArrowInvalid: not CSV (an empty file, a ragged first block).
    """
    ragged: list[Any] = []
    with fsspec.open(with_scheme(uri), "rb", compression="infer") as f:
        try:
            return list(pacsv.open_csv(f, parse_options=_csv_parse(ragged)).schema.names)
        except pa.ArrowInvalid as e:
            if ragged:
                raise pa.ArrowInvalid(_ragged_row(uri, ragged[0])) from e
            raise


def _csv_parse(ragged: list[Any]) -> pacsv.ParseOptions:
    """How every CSV is parsed. A blank line is a row (of missing values), as the fast skip to a
    shard's first row counts it: it fails the schema check by its row number instead of
    vanishing. The first ragged row is kept in `ragged` (Arrow's error does not say where)."""

    def keep(row: Any) -> str:
        ragged.append(row)
        return "error"

    return pacsv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=keep)


def _ragged_row(uri: str, row: Any) -> str:
    """A row with more or fewer fields than the header, named by its line (counted from 1,
    the header line 1); a streaming reader does not know the line, so it is looked up."""
    text = str(row.text)
    line = None
    with fsspec.open(with_scheme(uri), "rb", compression="infer") as f:
        target = text.encode()
        for number, raw in enumerate(f, start=1):
            if number > 1 and raw.rstrip(b"\r\n") == target:
                line = number
                break
    where = f"line {line}" if line is not None else "a row"
    shown = text if len(text) <= 120 else f"{text[:120]}..."
    return (
        f"{where} has {row.actual_columns} fields where the header has "
        f"{row.expected_columns}: {shown}"
    )


def _read_json(uri: str) -> dict[str, Any] | None:
    try:
        value = artifacts.read_json(uri)
    except artifacts.ArtifactError:
        return None
    return value if isinstance(value, dict) else None


def _write_json(uri: str, value: Any) -> None:
    artifacts.store_bytes(uri, json.dumps(value, indent=1, sort_keys=True).encode())


def _claim_output(output: str, run_id: str) -> None:
    """The output directory is this run's: empty, or holding this very run's files. Another
    run's are never written over nor deleted: its parts may be someone's results.

    Raises:
        RunFailure: OutputInUse when another run (another BatchPrediction, or an earlier one of
        this name, deleted and created again) wrote there.
    """
    planned = _read_json(join(output, PLAN_FILE))
    manifest = _read_json(join(output, MANIFEST_FILE))
    for found in (planned, manifest):
        if found is not None and found.get("runId") != run_id:
            finished = manifest is not None and manifest.get("runId") == found.get("runId")
            raise RunFailure("OutputInUse", in_use_message(output, found, finished))
    fs, path = _fs(output)
    parts = fs.glob(f"{path.rstrip('/')}/part-*.parquet") if fs.exists(path) else []
    if parts and planned is None:
        raise RunFailure(
            "OutputInUse",
            f"spec.output.uri: {output} already holds parts ({parts[0].rsplit('/', 1)[-1]}) "
            "that no BatchPrediction run wrote: choose an empty output.uri",
        )


def in_use_message(output: str, found: dict[str, Any], finished: bool) -> str:
    """Why `output` is refused: whose run wrote there (an earlier run of this very name is
    said to be one), whether it finished, and how to score there again."""
    other, run = found.get("batchPrediction"), found.get("runId")
    ended = (
        f"finished ({MANIFEST_FILE} is there)"
        if finished
        else f"did not finish (no {MANIFEST_FILE}: deleted or failed mid-run)"
    )
    if other and other == os.environ.get(BATCHPREDICTION_ENV):
        whose = f"an earlier run of {other} (run {run}, since deleted), which {ended}"
    else:
        whose = (
            f"{f'BatchPrediction {other}' if other else 'another run'} (run {run}), which {ended}"
        )
    return (
        f"spec.output.uri: {output} holds the output of {whose}: choose another output.uri, or "
        f"delete the directory's part-*.parquet, {MANIFEST_FILE} and {PRIVATE_DIR}/ to score "
        "there again; a run never mixes its parts with another run's, nor deletes them"
    )


def plan(spec: BatchPredictionSpec, run_id: str, model_uri: str | None = None) -> dict[str, Any]:
    """List the input, count its rows and check every file has the columns the shards read
    (the model's input columns, from `model_uri`'s schema.json, and ``output.idColumn``), claim
    the output, write the plan; the result names the shards. A file's missing column fails the
    run here, before any shard starts.

    Raises:
        RunFailure: InputNotFound, InvalidInput, InputSchemaMismatch, ArtifactError,
        OutputInUse, TooManyShards; StoreError (transient).
    """
    columns = _model_columns(model_uri) if model_uri else []
    id_column = spec.output.id_column
    wanted = list(dict.fromkeys([*columns, *([id_column] if id_column else [])]))
    files = []
    for uri, fmt, size in list_inputs(spec.input.uri, spec.input.format):
        rows, names = inspect_file(uri, fmt)
        if rows:
            _missing(uri, names, wanted, id_column)
        files.append(InputFile(uri, fmt, rows, size))
    made = Plan(
        run_id, spec.input.uri, spec.output.uri, spec.rows_per_shard, [f for f in files if f.rows]
    )
    if made.rows == 0:
        raise RunFailure("InputNotFound", f"spec.input.uri: {spec.input.uri} holds no rows")
    if made.shards > MAX_SHARDS:
        raise RunFailure(
            "TooManyShards",
            f"spec.rowsPerShard: {made.rows:,} rows in shards of {spec.rows_per_shard:,} make "
            f"{made.shards:,} shards, more than {MAX_SHARDS:,}: raise rowsPerShard to at least "
            f"{-(-made.rows // MAX_SHARDS):,}",
        )
    _claim_output(spec.output.uri, run_id)
    document = {**made.to_json(), "batchPrediction": os.environ.get(BATCHPREDICTION_ENV)}
    _write_json(join(spec.output.uri, PLAN_FILE), document)
    return {
        "status": "Planned",
        "files": len(made.files),
        "rows": made.rows,
        "shards": made.shards,
        "bytes": sum(f.bytes for f in made.files),
    }


def _model_columns(model_uri: str) -> list[str]:
    """The model's input columns, from its schema.json (the model itself is not loaded).

    Raises:
        RunFailure: ArtifactError.
    """
    try:
        return list(artifacts.load_schema(model_uri).column_types())
    except (artifacts.ArtifactError, ServeConfigError, ValueError) as e:
        raise RunFailure("ArtifactError", f"{model_uri}: {e}") from e


def load_plan(output: str, run_id: str) -> Plan:
    """This run's plan.

    Raises:
        RunFailure: PlanNotFound (transient: the store may be away), OutputInUse.
    """
    value = _read_json(join(output, PLAN_FILE))
    if value is None:
        raise RunFailure(
            "PlanNotFound", f"{join(output, PLAN_FILE)} cannot be read", permanent=False
        )
    if value.get("runId") != run_id:
        raise RunFailure(
            "OutputInUse",
            f"spec.output.uri: {output} was taken over by {value.get('batchPrediction')} "
            f"(run {value.get('runId')})",
        )
    return Plan.from_json(value)


# -- one shard ------------------------------------------------------------------------------------


class SchemaMismatch(RunFailure):
    """A row the model cannot take: the shard fails for good, naming the file, column and row."""

    def __init__(self, message: str) -> None:
        super().__init__("InputSchemaMismatch", message)


@dataclass(frozen=True)
class Scoring:
    """What one shard scores with."""

    model_version: str
    model_uri: str
    sha256: str | None = None
    """Of model.joblib; None: the digest recorded beside it (laptop runs)."""


def load_predictor(scoring: Scoring) -> Predictor:
    """The verified model and its input schema, as a server loads them.

    Raises:
        RunFailure: ArtifactError (permanent: a digest that does not match never will).
    """
    try:
        model = artifacts.load_verified_model(scoring.model_uri, scoring.sha256)
        return Predictor(model, artifacts.load_schema(scoring.model_uri))  # type: ignore[arg-type]
    except (artifacts.ArtifactError, ServeConfigError) as e:
        raise RunFailure("ArtifactError", f"{scoring.model_version}: {e}") from e


def _numeric(array: pa.Array) -> bool:
    t = array.type
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def _fast_array(
    array: pa.Array, kind: ColumnType, nullable: bool, dtype: type[np.generic]
) -> npt.NDArray[Any] | None:
    """The column as the model's array at C speed, or None when some value needs a closer look
    (a type the schema does not take, a missing value it does not allow, a non-finite number)."""
    t = array.type
    if pa.types.is_dictionary(t):
        array, t = array.dictionary_decode(), t.value_type
    if pa.types.is_null(t):
        return (
            np.full(len(array), np.nan if dtype is np.float64 else None, dtype=dtype)
            if nullable
            else None
        )
    if kind in ("float", "int"):
        if not _numeric(array) or (array.null_count and not nullable):
            return None
        values = np.asarray(pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False))
        finite = np.isfinite(values)
        if not finite.all() and (not nullable or np.isinf(values).any()):
            return None
        if kind == "int" and not pa.types.is_integer(t) and np.any(values[finite] % 1):
            return None
        if dtype is np.float64:
            return values
        if pa.types.is_integer(t):
            try:
                return np.asarray(pc.cast(array, pa.int64()).to_numpy(zero_copy_only=False))
            except pa.ArrowInvalid:  # a uint64 beyond int64
                return None
        return values.astype(np.int64)
    if kind == "string":
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            return None
    elif not pa.types.is_boolean(t):
        return None
    if array.null_count and not nullable:
        return None
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=dtype)


def check_batch(
    batch: pa.RecordBatch, predictor: Predictor, where: str, first_row: int
) -> dict[str, npt.NDArray[Any]]:
    """The model's input columns of `batch`, checked against its schema, as arrays.

    Raises:
        SchemaMismatch: naming `where` (the file), the column and the row (`first_row` is the
        file row of the batch's first row).
    """
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, kind in predictor.column_types.items():
        nullable = name in predictor.nullable
        column = batch.column(name)
        fast = _fast_array(column, kind, nullable, predictor.dtypes[name])
        if fast is not None:
            arrays[name] = fast
            continue
        values = column.to_pylist()
        if nullable:  # a NaN is a missing value here, as the fast path takes it
            values = [None if v != v else v for v in values]  # noqa: PLR0124
        try:  # the serving checks, value by value, word what is wrong and where
            check_types(name, kind, values, nullable, first_row=first_row)
        except RequestError as e:
            raise SchemaMismatch(f"{where}: {e.message}") from None
        raise SchemaMismatch(
            f"{where}: column {name!r} must be {kind}, but the input holds {column.type}"
        )
    return arrays


def _batches(
    source: InputFile, start: int, end: int, columns: list[str], predictor: Predictor,
    id_column: str | None, batch_size: int,
) -> Iterator[tuple[pa.RecordBatch, int]]:  # fmt: skip
    """(batch, file row of its first row) over rows [start, end) of one file.

    Raises:
        RunFailure: InvalidInput (permanent: the file is not what the plan read) when it cannot
        be parsed; SchemaMismatch for a missing column or a bad value.
    """
    ragged: list[Any] = []
    try:
        if source.format == "Parquet":
            yield from _parquet_batches(source, start, end, columns, id_column, batch_size)
        else:
            yield from _csv_batches(
                source, start, end, columns, predictor, id_column, batch_size, ragged
            )
    except pa.ArrowInvalid as e:
        problem = _ragged_row(source.uri, ragged[0]) if ragged else arrow_message(e)
        raise RunFailure(
            "InvalidInput", f"{source.uri} is not valid {source.format}: {problem}"
        ) from None


def _missing(where: str, present: list[str], columns: list[str], id_column: str | None) -> None:
    """Refuse a file without some of `columns`, naming every one missing (and saying which is
    ``output.idColumn``) and the file's own columns.

    Raises:
        SchemaMismatch: naming `where` (the file).
    """
    absent = [c for c in columns if c not in present]
    if not absent:
        return
    said = []
    if id_column in absent:
        said.append(f"spec.output.idColumn {id_column!r}")
    model = [c for c in absent if c != id_column]
    if model:
        said.append(
            f"the model's input column{'s' if len(model) > 1 else ''} "
            + ", ".join(repr(c) for c in model)
        )
    verb = "is" if len(absent) == 1 else "are"
    raise SchemaMismatch(
        f"{where}: {' and '.join(said)} {verb} not in the file (its columns: "
        f"{', '.join(present[:20])}{', ...' if len(present) > 20 else ''})"
    )


def _parquet_batches(
    source: InputFile,
    start: int,
    end: int,
    columns: list[str],
    id_column: str | None,
    batch_size: int,
) -> Iterator[tuple[pa.RecordBatch, int]]:
    handle, parquet = _open_parquet(source.uri)
    with handle:
        _missing(source.uri, parquet.schema_arrow.names, columns, id_column)
        groups, offset, first = [], 0, None
        for index in range(parquet.metadata.num_row_groups):
            rows = parquet.metadata.row_group(index).num_rows
            if offset + rows > start and offset < end:
                groups.append(index)
                first = offset if first is None else first
            offset += rows
        row = first or 0
        for batch in parquet.iter_batches(
            batch_size=batch_size, row_groups=groups, columns=columns
        ):
            low, high = max(start, row), min(end, row + batch.num_rows)
            if low < high:
                yield batch.slice(low - row, high - low), low
            row += batch.num_rows
            if row >= end:
                return


def _csv_batches(
    source: InputFile, start: int, end: int, columns: list[str], predictor: Predictor,
    id_column: str | None, batch_size: int, ragged: list[Any],
) -> Iterator[tuple[pa.RecordBatch, int]]:  # fmt: skip
    """A CSV's rows [start, end), in blocks of about `batch_size` rows. The rows before `start`
    are skipped as lines, never parsed into values; every column is read as text and cast to
    its schema type here, so only the shard's own rows can fail it. A ragged row is kept in
    `ragged`."""
    per_row = source.bytes / max(source.rows, 1)
    block = int(min(max(batch_size * per_row, CSV_BLOCK_BYTES[0]), CSV_BLOCK_BYTES[1]))
    with fsspec.open(with_scheme(source.uri), "rb", compression="infer") as handle:
        try:
            reader = pacsv.open_csv(
                handle,
                read_options=pacsv.ReadOptions(block_size=block, skip_rows_after_names=start),
                parse_options=_csv_parse(ragged),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns, column_types=dict.fromkeys(columns, pa.string())
                ),
            )
        except pa.ArrowKeyError:  # a column not in the header: say which, as Parquet does
            _missing(source.uri, csv_header(source.uri), columns, id_column)
            raise
        row = start
        for text in reader:
            batch = text.slice(0, min(end - row, text.num_rows))
            yield _typed(batch, predictor, source.uri, row), row
            row += text.num_rows
            if row >= end:
                return


def _typed(
    batch: pa.RecordBatch, predictor: Predictor, where: str, first_row: int
) -> pa.RecordBatch:
    """A CSV batch read as text, its schema columns cast to their types at C speed (a CSV's
    usual missing-value words, such as an empty cell or NA, are missing values in a number
    or bool column); a value that is none of its type is named by the serving checks.

    Raises:
        SchemaMismatch: naming the column and row.
    """
    arrays = []
    for name in batch.schema.names:
        column = batch.column(name)
        kind = predictor.column_types.get(name)
        if kind is not None and kind != "string":
            missing = pc.is_in(column, value_set=CSV_MISSING)
            cleaned = pc.if_else(missing, pa.scalar(None, pa.string()), column)
            try:
                column = pc.cast(cleaned, CSV_TYPES[kind])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = _cast_by_value(cleaned, name, kind, predictor, where, first_row)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _cast_by_value(
    text: pa.Array, name: str, kind: ColumnType, predictor: Predictor, where: str, first_row: int
) -> pa.Array:
    """What Arrow's cast refused (`1.0` for an int, ` 2` with a space), value by value as a
    request's JSON would carry it: taken when the serving checks take it, else named."""
    values = [_parsed(v, kind) for v in text.to_pylist()]
    try:
        check_types(name, kind, values, name in predictor.nullable, first_row=first_row)
    except RequestError as e:
        raise SchemaMismatch(f"{where}: {e.message}") from None
    return pa.array(values, type=CSV_TYPES[kind])


_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}


def _parsed(text: str | None, kind: ColumnType) -> Any:
    """A CSV cell as the JSON value a request would carry, so the serving checks word it."""
    if text is None or kind == "string":
        return text
    if kind == "bool":
        return _BOOL_TEXT.get(text.strip().lower(), text)
    try:
        number = float(text)
    except ValueError:
        return text
    return (
        int(number) if kind == "int" and number.is_integer() and math.isfinite(number) else number
    )


def _output_names(predictor: Predictor, id_column: str | None) -> list[str]:
    """The part's columns; a clash between an input column and a prediction's is refused.

    Raises:
        RunFailure: OutputColumnConflict.
    """
    kept = [id_column] if id_column else list(predictor.column_types)
    made = [PREDICTION_COLUMN]
    if predictor.has_probabilities:
        made += [f"{PROBABILITY_PREFIX}{c}" for c in predictor.classes.tolist()]
    clash = sorted(set(kept) & set(made))
    if clash:
        raise RunFailure(
            "OutputColumnConflict",
            f"input column {clash[0]!r} has the name of an output column: set output.idColumn "
            "to keep only an id column beside the prediction",
        )
    return [*kept, *made]


class PartWriter:
    """One shard's part: batches streamed into Parquet, visible only once whole."""

    def __init__(self, uri: str) -> None:
        self.fs, self.path = _fs(uri)
        local = isinstance(self.fs, LocalFileSystem)
        if local:
            self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        # a file system shows a file while it is written: write beside it, rename at the end
        self.writing = f"{self.path}.tmp" if local else self.path
        self.file: Any = None
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, batch: pa.RecordBatch, where: str) -> None:
        """Append `batch`; a later file of the shard whose kept columns have other types than
        the first one's is refused, naming the column (a part has one schema).

        Raises:
            SchemaMismatch: naming `where` (the file) and the column.
        """
        if self.writer is None:
            self.file = self.fs.open(self.writing, "wb")
            # ids and probabilities never repeat: a dictionary per row group for them only
            # costs (3x the writing time), the predicted labels compress well in one
            self.writer = pq.ParquetWriter(
                self.file, batch.schema, use_dictionary=[PREDICTION_COLUMN]
            )
        elif batch.schema != self.writer.schema:
            batch = _conform(batch, self.writer.schema, where)
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> int:
        """Finish the part; returns its size in bytes."""
        assert self.writer is not None, "a shard has rows"
        self.writer.close()
        self.file.close()
        if self.writing != self.path:
            self.fs.mv(self.writing, self.path)
        return int(self.fs.size(self.path))

    def abandon(self) -> None:
        """Drop what was written (the manifest step removes what a killed attempt left)."""
        if self.writer is not None:
            with contextlib.suppress(OSError, ValueError, pa.ArrowException):
                self.writer.close()
        if self.file is not None:
            self.file.close()
            if self.writing != self.path:
                with contextlib.suppress(OSError):
                    self.fs.rm(self.writing)


def _conform(batch: pa.RecordBatch, schema: pa.Schema, where: str) -> pa.RecordBatch:
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        changed = next(f for f in schema if batch.schema.field(f.name).type != f.type)
        raise SchemaMismatch(
            f"{where}: column {changed.name!r} is {batch.schema.field(changed.name).type} "
            f"here but {changed.type} in the shard's earlier rows: the files of one input must "
            "agree on their columns' types"
        ) from None


def _canonical(array: pa.Array) -> pa.Array:
    """A kept input column in one type per kind, whichever file it came from: text as string,
    whole numbers as int64, other numbers as float64 (a Parquet file's large_string, int32 or
    dictionary columns and a CSV's parsed ones then agree)."""
    t = array.type
    if pa.types.is_dictionary(t):
        array, t = array.dictionary_decode(), t.value_type
    if pa.types.is_large_string(t):
        return pc.cast(array, pa.string())
    if pa.types.is_integer(t) and t != pa.int64() and not pa.types.is_uint64(t):
        return pc.cast(array, pa.int64())
    if pa.types.is_floating(t) and t != pa.float64():
        return pc.cast(array, pa.float64())
    return array


def _attempt() -> int:
    """Which attempt of its shard this pod is (1 for the first), from the Job's annotations."""
    return 1 + sum(int(os.environ.get(env) or 0) for env in SHARD_ATTEMPT_ENV.values())


def _output_batch(
    batch: pa.RecordBatch, predictor: Predictor, features: Any, names: list[str],
    id_column: str | None, metadata: dict[bytes, bytes], first_row: int, where: str,
) -> pa.RecordBatch:  # fmt: skip
    try:
        prediction = predictor.predict(features, first_row=first_row)
    except RequestError as e:  # a non-finite answer
        raise SchemaMismatch(f"{where}: {e.message}") from None
    kept = [id_column] if id_column else list(predictor.column_types)
    columns = [_canonical(batch.column(name)) for name in kept]
    columns.append(pa.array(prediction.values))
    if prediction.probabilities is not None:
        columns += [pa.array(prediction.probabilities[:, k]) for k in range(len(predictor.classes))]
    return pa.RecordBatch.from_arrays(columns, names=names).replace_schema_metadata(metadata)


def score_shard(
    spec: BatchPredictionSpec, run_id: str, shard: int, scoring: Scoring
) -> dict[str, Any]:
    """Score one shard into its part and record it; the result is the termination message.

    Raises:
        RunFailure: permanent for a row the model cannot take (InputSchemaMismatch), an
        artifact that fails its digest, a plan another run took over; transient for the store
        (StoreError). The shard's record says why first, so the manifest names it.
    """
    started = time.time()
    record: dict[str, Any] = {"shard": shard, "attempt": _attempt(), "startedAt": _utc(started)}
    writer = PartWriter(join(spec.output.uri, part_name(shard)))
    try:
        rows_in = _score(spec, run_id, shard, scoring, writer)
        size = writer.close()
    except Exception as e:
        writer.abandon()
        failure = (
            e
            if isinstance(e, RunFailure)
            else RunFailure("StoreError", one_line(e), permanent=False)
            if isinstance(e, OSError | pa.ArrowException)  # the store, or half a file from it
            else RunFailure("InternalError", one_line(e), permanent=False)
        )
        _record(spec.output.uri, record, started, status="Failed", reason=failure.reason,
                message=failure.message)  # fmt: skip
        if failure is e:
            raise
        raise failure from e
    done = _record(
        spec.output.uri, record, started, status="Succeeded", part=part_name(shard),
        rowsIn=rows_in, rowsOut=writer.rows, bytes=size, modelVersion=scoring.model_version,
    )  # fmt: skip
    return {
        "status": "Succeeded",
        **{k: done[k] for k in ("shard", "rowsIn", "rowsOut", "seconds")},
    }


def _score(
    spec: BatchPredictionSpec, run_id: str, shard: int, scoring: Scoring, writer: PartWriter
) -> int:
    """Stream the shard's rows through the schema checks and the model into `writer`; returns
    the rows read."""
    the_plan = load_plan(spec.output.uri, run_id)
    if not 0 <= shard < the_plan.shards:
        raise RunFailure("InvalidShard", f"shard {shard} is not one of 0-{the_plan.shards - 1}")
    predictor = load_predictor(scoring)
    id_column = spec.output.id_column
    names = _output_names(predictor, id_column)
    columns = list(dict.fromkeys([*predictor.column_types, *([id_column] if id_column else [])]))
    metadata = {
        MODEL_VERSION_METADATA: scoring.model_version.encode(),
        SHA256_METADATA: (scoring.sha256 or "").encode(),
    }
    if predictor.has_probabilities:
        metadata[LOG_CLASSES_METADATA] = json.dumps(predictor.classes.tolist()).encode()
    rows_in = 0
    for source, start, end in the_plan.ranges(shard):
        for batch, first_row in _batches(
            source, start, end, columns, predictor, id_column, spec.batch_size
        ):
            arrays = check_batch(batch, predictor, source.uri, first_row)
            out = _output_batch(
                batch, predictor, predictor.features(arrays), names, id_column, metadata,
                first_row, source.uri,
            )  # fmt: skip
            writer.write(out, source.uri)
            rows_in += batch.num_rows
    return rows_in


def _record(output: str, record: dict[str, Any], started: float, **fields: Any) -> dict[str, Any]:
    """The shard's record in the store (best effort for a failure: the store may be the
    failure)."""
    finished = time.time()
    record = {
        **record,
        **fields,
        "finishedAt": _utc(finished),
        "seconds": round(finished - started, 3),
    }
    try:
        _write_json(join(output, shard_record_name(record["shard"])), record)
    except OSError:
        if fields.get("status") == "Succeeded":
            raise
    return record


# -- manifest -------------------------------------------------------------------------------------


def write_manifest(
    spec: BatchPredictionSpec, run_id: str, model_version: str, sha256: str | None
) -> dict[str, Any]:
    """Merge the shards' records into ``_manifest.json``; drop what killed attempts left.

    Raises:
        RunFailure: PlanNotFound, OutputInUse.
    """
    output = spec.output.uri
    the_plan = load_plan(output, run_id)
    fs, path = _fs(output)
    fs.invalidate_cache()  # s3fs keeps listings: the shards wrote since this process looked
    folder = f"{path.rstrip('/')}/{SHARDS_DIR}"
    found = fs.ls(folder, detail=False) if fs.exists(folder) else []
    texts = fs.cat([p for p in found if p.endswith(".json")]) if found else {}
    records: dict[int, dict[str, Any]] = {}
    for text in texts.values():
        record = json.loads(text)
        records[int(record["shard"])] = record
    shards = [records.get(i, {"shard": i, "status": "NotRun"}) for i in range(the_plan.shards)]
    for stale in fs.glob(f"{path.rstrip('/')}/part-*.parquet.tmp"):
        fs.rm(stale)
    done = [s for s in shards if s.get("status") == "Succeeded"]
    times = [s[k] for s in shards for k in ("startedAt", "finishedAt") if k in s]
    manifest = {
        "runId": run_id,
        "batchPrediction": os.environ.get(BATCHPREDICTION_ENV),
        "modelVersion": model_version,
        "sha256": sha256,
        "input": spec.input.uri,
        "output": output,
        "rowsPerShard": the_plan.rows_per_shard,
        "rows": the_plan.rows,
        "rowsIn": sum(int(s.get("rowsIn") or 0) for s in done),
        "rowsOut": sum(int(s.get("rowsOut") or 0) for s in done),
        "succeeded": len(done),
        "failed": len(shards) - len(done),
        "startedAt": min(times, default=None),
        "finishedAt": max(times, default=None),
        "files": [asdict(f) for f in the_plan.files],
        "shards": shards,
    }
    uri = join(output, MANIFEST_FILE)
    _write_json(uri, manifest)
    return {
        "status": "Written",
        "uri": uri,
        "rowsOut": manifest["rowsOut"],
        "succeeded": manifest["succeeded"],
        "failed": manifest["failed"],
    }


# -- a whole run on one machine -------------------------------------------------------------------


def _shard_in_process(
    spec: BatchPredictionSpec, run_id: str, shard: int, scoring: Scoring
) -> dict[str, Any]:
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    try:
        return score_shard(spec, run_id, shard, scoring)
    except RunFailure as failure:
        return {
            "status": "Failed",
            "shard": shard,
            "reason": failure.reason,
            "message": failure.message,
        }


def run_local(
    spec: BatchPredictionSpec, run_id: str, scoring: Scoring, parallelism: int | None = None
) -> dict[str, Any]:
    """Plan, every shard (`parallelism` processes at once, default spec.parallelism), manifest:
    what the operator's three Jobs do, on a laptop. Returns the manifest step's result plus the
    failed shards."""
    planned = plan(spec, run_id, scoring.model_uri)
    workers = parallelism or spec.parallelism
    shards = range(int(planned["shards"]))
    one = partial(_shard_in_process, spec, run_id, scoring=scoring)
    if workers == 1:
        results = [one(i) for i in shards]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, shards))
    written = write_manifest(spec, run_id, scoring.model_version, scoring.sha256)
    failures = [r for r in results if r["status"] == "Failed"]
    return {**written, "failures": failures}
