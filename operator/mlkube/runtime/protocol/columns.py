"""The checks every protocol runs on a column's values: one rule per schema type, at C speed for
the common case, value by value only to word the error."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from mlkube.api.modelversion import ColumnType
from mlkube.runtime.protocol.errors import RequestError, describe

# Which JSON value types each schema type accepts (bool is not an int here).
ACCEPTED: dict[ColumnType, frozenset[type]] = {
    "float": frozenset({float, int}),
    "int": frozenset({int, float}),
    "string": frozenset({str}),
    "bool": frozenset({bool}),
}
DTYPES: dict[ColumnType, type[np.generic]] = {
    "float": np.float64,
    "int": np.int64,
    "string": np.object_,
    "bool": np.bool_,
}
PROBE_VALUES: dict[ColumnType, float | int | str | bool] = {
    "float": 0.0,
    "int": 0,
    "string": "",
    "bool": False,
}
NUMBERS = frozenset({float, int})
_NONE = type(None)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EXACT_FLOAT_INTEGER = 2**53
"""Every integer below this is exact as a float64; from it on, JSON numbers may have been
rounded (2**53 + 1 parses as 2**53), so an int column takes them only as JSON integers."""


def check_types(
    name: str,
    expected: ColumnType,
    values: list[Any],
    nullable: bool,
    label: str | None = None,
    first_row: int = 0,
) -> None:
    """A RequestError (422) naming `name` and the first row whose value a column of type
    `expected` does not take; `label` words the column in the message (default
    ``column '<name>'``), rows are counted from `first_row` (a batch of a larger file)."""
    if _all_valid(expected, values, nullable):
        return
    label = label or f"column {name!r}"
    for index, value in enumerate(values, first_row):
        if value is None and not nullable:
            raise RequestError(
                422,
                f"{label} must be {expected}, got null in row {index}: the model was "
                "not trained to take missing values there",
                name,
            )
        problem = None if value is None else _problem(expected, value)
        if problem is not None:
            raise RequestError(
                422,
                f"{label} must be {expected}, got {describe(value)} in row {index}{problem}",
                name,
            )


def _valid(expected: ColumnType, value: Any, nullable: bool) -> bool:
    return (value is None and nullable) or _problem(expected, value) is None


def _problem(expected: ColumnType, value: Any) -> str | None:
    """Why `value` (not null) does not fit a column of type `expected`; None when it does."""
    kind = type(value)
    if kind not in ACCEPTED[expected]:
        return ""
    if kind is float and not math.isfinite(value):
        return ""
    if expected != "int":
        return None
    if kind is float and not value.is_integer():
        return ""
    if kind is float and abs(value) >= _EXACT_FLOAT_INTEGER:  # 2**53 + 1 arrives as 2**53
        # JSON integers beyond 64 bits arrive as floats, already rounded
        return (
            ": a number written with a fraction or exponent is not exact from 2**53 on; "
            "write the integer's digits"
        )
    if kind is int and not _INT64_MIN <= value <= _INT64_MAX:
        return ": beyond a 64-bit integer"
    return None


def _all_valid(expected: ColumnType, values: list[Any], nullable: bool) -> bool:
    """`_valid` for every value, at C speed where it matters (floats in float columns)."""
    kinds = set(map(type, values))
    if nullable and _NONE in kinds:
        kinds.discard(_NONE)
        values = [v for v in values if v is not None]
    if not kinds <= ACCEPTED[expected]:
        return False
    if (
        expected == "int"
        and int in kinds
        and (min(values) < _INT64_MIN or max(values) > _INT64_MAX)
    ):
        return False
    if float not in kinds:
        return True
    if expected == "int":
        return all(_valid(expected, v, nullable) for v in values)
    try:
        return all(map(math.isfinite, values))
    except OverflowError:  # an integer beyond float's range
        return False


def number_matrix(
    parts: Sequence[Sequence[Any]], shape: tuple[int, int]
) -> npt.NDArray[np.float64] | None:
    """`parts` (rows, or columns, each a sequence of values; together exactly the matrix's
    values in row-major order) as a float matrix of `shape` when they hold JSON numbers only (no
    bools, strings, nulls or containers); None otherwise, or for an integer beyond float's
    range. The values are read from the parts as they are (``np.fromiter`` over them), never
    copied into one list first: at 100 rows as fast as ``np.array`` of the rows, which checks
    nothing."""
    if not set(map(type, chain.from_iterable(parts))) <= NUMBERS:
        return None
    try:
        flat = np.fromiter(chain.from_iterable(parts), np.float64, shape[0] * shape[1])
    except (OverflowError, ValueError):
        return None
    return flat.reshape(shape)


def finite_number(value: Any) -> bool:
    try:
        return type(value) in NUMBERS and math.isfinite(value)
    except OverflowError:  # an integer beyond float's range
        return False
