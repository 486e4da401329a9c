"""Load a TrainingJob's dataset and check it before anything is fitted."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import fsspec
import httpx
import pandas as pd
from sklearn import datasets as sk_datasets

from mlkube.api.modelversion import Column, ColumnType
from mlkube.api.trainingjob import ColumnRange, Dataset, DataTests, InferenceLogDataset
from mlkube.estimators import BUILTIN_DATASETS
from mlkube.layout import RESERVED_COLUMN_PREFIX, inference_log_uri
from mlkube.runtime import quality
from mlkube.runtime.log_window import read_version_window
from mlkube.runtime.outcome import RunFailure, one_line


@dataclass(frozen=True)
class LoadedDataset:
    frame: pd.DataFrame
    digest: str
    """sha256 of the bytes read (or of a canonical CSV for built-in sets): lineage, not security."""
    log_window: dict[str, Any] | None = None
    """For labelled production data: the ModelVersion lineage's ``inferenceLog`` (which
    Deployment, versions, time span, rows and feedback files went in)."""


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _load_builtin(name: str) -> LoadedDataset:
    if name not in BUILTIN_DATASETS:
        raise RunFailure(
            "DatasetNotFound",
            f"dataset.uri: builtin:{name} is not a bundled dataset; "
            f"choose one of {', '.join(BUILTIN_DATASETS)}",
        )
    bunch = getattr(sk_datasets, f"load_{name}")(as_frame=True)
    frame: pd.DataFrame = bunch.frame.rename(columns=_snake)
    digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
    return LoadedDataset(frame=frame, digest=digest)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_BYTES_ENV = "MLKUBE_DATASET_MAX_BYTES"
DEFAULT_MAX_BYTES = 1 << 30
MAX_REDIRECTS = 5
HTTP_TIMEOUT_SECONDS = 30.0
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public_address(address: IPAddress) -> bool:
    """Whether an https:// dataset may be fetched from `address`: never a private, loopback,
    link-local (cloud metadata), multicast, reserved or unspecified one, nor such an IPv4 address
    carried inside IPv6 (mapped, 6to4, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not address.is_multicast


def resolve_host(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def max_dataset_bytes() -> int:
    """The cap on an https:// dataset's body (MLKUBE_DATASET_MAX_BYTES, default 1 GiB)."""
    return int(os.environ.get(MAX_BYTES_ENV) or DEFAULT_MAX_BYTES)


def _checked_address(
    uri: str,
    url: httpx.URL,
    allowed: Callable[[IPAddress], bool],
    resolve: Callable[[str, int], list[IPAddress]],
) -> IPAddress:
    """The address to connect to, once every address the host resolves to is allowed; the
    connection goes to this very address, so a second DNS answer cannot swap it (rebinding)."""
    where = "" if str(url) == uri else f" (redirected to {str(url)[:256]})"
    if url.scheme != "https":
        raise RunFailure("ForbiddenURI", f"dataset.uri: {uri}{where}: only https is fetched")
    host = url.raw_host.decode("ascii")
    try:
        addresses = resolve(host, url.port or 443)
    except (OSError, ValueError) as e:
        raise RunFailure(
            "DatasetNotFound", f"dataset.uri: {uri}{where}: cannot resolve {host}", permanent=False
        ) from e
    refused = [a for a in addresses if not allowed(a)]
    if refused or not addresses:
        raise RunFailure(
            "ForbiddenURI",
            f"dataset.uri: {uri}{where}: {host} resolves to {refused[0] if refused else 'nothing'}, "
            "a private, loopback, link-local or reserved address; only public hosts are fetched",
        )
    return addresses[0]


def _read_capped(uri: str, response: httpx.Response, max_bytes: int) -> bytes:
    too_big = RunFailure(
        "DatasetTooLarge",
        f"dataset.uri: {uri} is larger than the cap of {max_bytes} bytes ({MAX_BYTES_ENV})",
    )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks, total = [], 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _unreachable(uri: str, error: httpx.TransportError) -> RunFailure:
    """Connection, TLS and timeout failures in our own words; any other names only its type,
    since a protocol error may quote what the peer sent."""
    local = isinstance(error, httpx.ConnectError | httpx.TimeoutException)
    detail = one_line(error) if local else type(error).__name__
    return RunFailure(
        "DatasetNotFound", f"dataset.uri: cannot read {uri}: {detail}", permanent=False
    )


def fetch_https(
    uri: str,
    max_bytes: int,
    *,
    allowed: Callable[[IPAddress], bool] = is_public_address,
    resolve: Callable[[str, int], list[IPAddress]] = resolve_host,
    verify: ssl.SSLContext | bool = True,
) -> bytes:
    """An https:// dataset, following at most MAX_REDIRECTS redirects, each to a public https
    address, and at most `max_bytes` long. Failures name the status code and the URL only: a
    response's text never reaches the TrainingJob's status."""
    url = httpx.URL(uri)
    with httpx.Client(verify=verify, trust_env=False, timeout=HTTP_TIMEOUT_SECONDS) as client:
        for _ in range(MAX_REDIRECTS + 1):
            address = _checked_address(uri, url, allowed, resolve)
            request = client.build_request(
                "GET",
                url.copy_with(host=str(address)),
                headers={"Host": url.netloc.decode("ascii")},
                extensions={"sni_hostname": url.raw_host.decode("ascii")},
            )
            try:
                response = client.send(request, stream=True)
            except httpx.TransportError as e:
                raise _unreachable(uri, e) from e
            try:
                if response.is_redirect and "location" in response.headers:
                    url = url.join(response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise RunFailure(
                        "DatasetNotFound",
                        f"dataset.uri: {uri} answered HTTP {response.status_code}",
                        permanent=response.status_code < 500,
                    )
                try:
                    return _read_capped(uri, response, max_bytes)
                except httpx.TransportError as e:
                    raise _unreachable(uri, e) from e
            finally:
                response.close()
    raise RunFailure(
        "DatasetNotFound", f"dataset.uri: {uri} redirects more than {MAX_REDIRECTS} times"
    )


def _read_format(uri: str, declared: str) -> str:
    if declared != "Auto":
        return declared
    return "Parquet" if uri.lower().endswith((".parquet", ".pq")) else "Csv"


def load_dataset(dataset: Dataset) -> LoadedDataset:
    uri = dataset.uri
    if uri is None:
        raise RunFailure("DatasetNotFound", "dataset.uri: not set")
    if uri.startswith("builtin:"):
        return _load_builtin(uri.removeprefix("builtin:"))
    if uri.startswith("https://"):
        data = fetch_https(uri, max_dataset_bytes())
    else:
        try:
            with fsspec.open(uri, "rb") as f:
                data = f.read()
        except (FileNotFoundError, OSError) as e:
            raise RunFailure("DatasetNotFound", f"dataset.uri: cannot read {uri}: {e}") from e
    fmt = _read_format(uri, dataset.format)
    try:
        frame = (
            pd.read_parquet(io.BytesIO(data)) if fmt == "Parquet" else pd.read_csv(io.BytesIO(data))
        )
    except Exception as e:  # a parser names what it could not read; keep its words
        raise RunFailure(
            "DataValidationFailed", f"dataset.uri: {uri} is not valid {fmt}: {e}"
        ) from e
    return LoadedDataset(frame=frame, digest=hashlib.sha256(data).hexdigest())


def load_training_data(
    dataset: Dataset,
    target: str,
    features: list[str] | None,
    artifact_root: str,
    namespace: str,
    now: float | None = None,
) -> LoadedDataset:
    """The rows to train on: ``dataset.uri``, the labelled production data of
    ``dataset.inferenceLog`` (a Deployment of `namespace` only: its log is found under this
    namespace's part of the store, so another team's never is), or the original followed by it.
    `now` is epoch seconds (default: the clock). Raises RunFailure naming the field."""
    original = load_dataset(dataset) if dataset.uri else None
    log = dataset.inference_log
    if log is None:
        assert original is not None, "the CRD requires dataset.uri or dataset.inferenceLog"
        return original
    log_uri = inference_log_uri(artifact_root, namespace, log.deployment)
    names = features or (
        [c for c in original.frame.columns if c != target]
        if original is not None
        else _logged_features(log_uri, target)
    )
    try:
        frame, lineage = quality.labelled_rows(
            log_uri,
            names,
            target,
            rows=log.rows,
            seconds=log.seconds,
            feedback_uris=log.feedback_uris,
            now=now,
        )
    except quality.QualityError as e:
        raise RunFailure("DataValidationFailed", f"dataset.inferenceLog: {e}") from e
    except OSError as e:
        raise RunFailure(
            "DatasetNotFound", f"dataset.inferenceLog: cannot read {log_uri}: {e}", permanent=False
        ) from e
    if frame.empty and original is None:
        raise RunFailure(
            "DatasetNotFound",
            f"dataset.inferenceLog: Deployment {log.deployment} has no logged prediction with a "
            f"label in the window (log {log_uri}): post ground truth to its /feedback first",
        )
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    if original is not None:
        missing = [c for c in [*names, target] if c not in original.frame.columns]
        if missing:
            raise RunFailure(
                "DataValidationFailed",
                f"dataset.uri: {dataset.uri} has no column {missing[0]!r}, which the inference "
                "log's rows have (inferenceLog.appendOriginal)",
            )
        frame = pd.concat([original.frame[[*names, target]], frame], ignore_index=True)
        digest.update(original.digest.encode())
    return LoadedDataset(frame, digest.hexdigest(), _log_window(log, lineage))


def _logged_features(log_uri: str, target: str) -> list[str]:
    """The feature columns the newest version logged, when the spec names none."""
    versions = quality.log_versions(log_uri)
    for version in reversed(versions):
        window = read_version_window(log_uri, version, rows=1)
        names = [c for c in window.column_names if not c.startswith(RESERVED_COLUMN_PREFIX)]
        if names:
            return [c for c in names if c != target]
    raise RunFailure(
        "DatasetNotFound",
        f"dataset.inferenceLog: nothing is logged under {log_uri}: the Deployment has served no "
        "prediction yet, or it is not in this namespace",
    )


def _log_window(log: InferenceLogDataset, lineage: dict[str, Any]) -> dict[str, Any]:
    spans = lineage.get("versions") or {}

    def when(key: str, pick: Any) -> str | None:
        if not spans:
            return None
        ms = pick(v[key] for v in spans.values())
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "deployment": log.deployment,
        "modelVersions": list(spans)[:8],  # a pod's termination message holds 4 KiB in all
        "first": when("firstTs", min),
        "last": when("lastTs", max),
        "rows": int(lineage.get("rows") or 0),
        "feedbackFiles": [str(f)[-120:] for f in lineage.get("feedbackFiles") or []][:8],
    }


def column_type(series: pd.Series) -> ColumnType:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


CheckedFrame = tuple[pd.DataFrame, list[Column]]

MOSTLY_NUMERIC = 0.95
"""An undeclared text column whose values are this share numbers or more is a numeric column
with a few bad values (a stray ``abc`` in a fee column), not a column of hundreds of categories."""

_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False}


def _fail(message: str) -> RunFailure:
    return RunFailure("DataValidationFailed", message)


def _shown(value: object) -> str:
    """A cell as the user wrote it: 2.5, not np.float64(2.5)."""
    item = getattr(value, "item", None)
    return repr(item() if callable(item) else value)


def _coerce(series: pd.Series, declared: ColumnType | None) -> tuple[pd.Series, ColumnType]:
    """The column in its declared (or inferred) type; a value that is not one names its row."""
    name = str(series.name)
    present = series.notna()
    if declared is None:
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            return series, column_type(series)
        numbers = pd.to_numeric(series, errors="coerce")
        parsed = numbers.notna() & present
        if present.sum() == 0 or parsed.sum() < MOSTLY_NUMERIC * present.sum():
            return series, "string"
        declared = "float"
        hint = f"; if {name!r} is categorical, declare it in dataTests.columns with type: string"
    else:
        hint = ""
    if declared == "string":
        return series.where(~present, series.astype(str)), "string"
    if declared == "bool":
        if pd.api.types.is_bool_dtype(series):
            return series, "bool"
        words = series.astype(str).str.strip().str.lower().map(_BOOL_WORDS)
        bad = present & words.isna()
        converted = words.where(present)
    else:
        converted = pd.to_numeric(series, errors="coerce")
        bad = present & converted.isna()
        if declared == "int" and not bad.any():
            bad = present & (converted % 1 != 0)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        value = _shown(series.iloc[row])
        raise _fail(f"column {name!r} must be {declared}, but row {row} holds {value}{hint}")
    if declared == "bool":
        return converted.astype(bool) if not converted.isna().any() else converted, "bool"
    return converted, declared


def _check_missing(
    series: pd.Series, allow: bool | None, max_percent: int, is_target: bool
) -> bool:
    """Refuse missing values the tests do not allow; True when the column may be missing."""
    name = str(series.name)
    missing = series.isna()
    if is_target or allow is False:
        if missing.any():
            row = int(missing.to_numpy().argmax())
            what = "the target" if is_target else f"column {name!r}"
            raise _fail(f"{what} has a missing value in row {row}, and it must not")
        return False
    if allow:
        return True
    percent = float(missing.mean() * 100)
    if percent > max_percent:
        row = int(missing.to_numpy().argmax())
        raise _fail(
            f"column {name!r} has {percent:.1f}% missing values (the first in row {row}), "
            f"more than dataTests.maxMissingPercent={max_percent}"
        )
    return max_percent > 0


def _check_values(series: pd.Series, allowed: list[str]) -> None:
    bad = series.notna() & ~series.astype(str).isin(allowed)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise _fail(
            f"column {series.name!r} holds {_shown(series.iloc[row])} in row {row}, which is not one "
            f"of dataTests.columns values ({', '.join(allowed[:10])}{', ...' if len(allowed) > 10 else ''})"
        )


def _check_range(series: pd.Series, rule: ColumnRange) -> None:
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise _fail(f"column {rule.column!r} is not numeric, so it has no range")
    low, high = series.min(), series.max()
    if pd.isna(low):  # nothing but missing values: no value is out of range
        return
    if rule.min is not None and Decimal(str(low)) < Decimal(rule.min):
        raise _fail(f"column {rule.column!r} has value {low} below min {rule.min}")
    if rule.max is not None and Decimal(str(high)) > Decimal(rule.max):
        raise _fail(f"column {rule.column!r} has value {high} above max {rule.max}")


def check_data(
    frame: pd.DataFrame, target: str, features: list[str], tests: DataTests
) -> CheckedFrame:
    """Data tests before fitting: the columns in their types, and the input schema.

    Each failure is a DataValidationFailed naming the column and, where there is one, the row.
    """
    absent = [c for c in [target, *features] if c not in frame.columns]
    if absent:
        raise _fail(
            f"column {absent[0]!r} is not in the dataset "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    reserved = [f for f in features if f.startswith(RESERVED_COLUMN_PREFIX)]
    if reserved:
        raise _fail(
            f"column {reserved[0]!r}: names starting with {RESERVED_COLUMN_PREFIX!r} are "
            "reserved for the inference log's own columns"
        )
    undeclared = [t.name for t in tests.columns if t.name not in (target, *features)]
    if undeclared:
        raise _fail(f"dataTests.columns: column {undeclared[0]!r} is not a feature or the target")
    if len(frame) < tests.min_rows:
        raise _fail(
            f"dataTests.minRows: the dataset has {len(frame)} rows, fewer than {tests.min_rows}"
        )
    declared = {t.name: t for t in tests.columns}
    checked: dict[str, pd.Series] = {}
    columns: list[Column] = []
    for name in [target, *features]:
        test = declared.get(name)
        series, kind = _coerce(frame[name].reset_index(drop=True), test.type if test else None)
        nullable = _check_missing(
            series, test.allow_missing if test else None, tests.max_missing_percent, name == target
        )
        if test is not None and test.values is not None:
            _check_values(series, test.values)
        checked[name] = series
        if name != target:
            columns.append(Column(name=name, type=kind, nullable=nullable))
    for rule in tests.ranges:
        if rule.column not in checked:
            raise _fail(f"dataTests.ranges: column {rule.column!r} is not a feature or the target")
        _check_range(checked[rule.column], rule)
    return pd.DataFrame(checked), columns
