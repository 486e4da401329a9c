"""Whether a tensor's values fit its declared Open Inference Protocol datatype: one check for
every protocol that carries the protocol's tensors (REST's JSON data, gRPC's typed and raw
contents), so a value is refused the same way whichever way it came.

Source: kserve/open-inference-protocol, ``specification/protocol/inference_rest.md``, "Tensor
Data Types": ``BOOL``; ``UINT8``-``UINT64`` and ``INT8``-``INT64``, integers in the range of
their width; ``FP16``/``FP32``/``FP64``, IEEE 754 numbers of that width (finite here: a model
takes no NaN or infinity); ``BYTES``, strings. Triton and KServe decode a tensor into its
datatype, so a value beyond it (``INT8`` 1000, ``FP32`` 1e300) is the request's error, not a
value the model scores.

A JSON ``null`` is not the datatype's business: whether a column takes missing values is its
schema's (`columns.check_types`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from mlkube.runtime.protocol.errors import RequestError, cut, describe

INTEGER_DATATYPES = tuple(f"{sign}INT{bits}" for sign in ("U", "") for bits in (8, 16, 32, 64))
FLOAT_DATATYPES = ("FP16", "FP32", "FP64")
BOUNDS: dict[str, tuple[int | float, int | float]] = {
    **{
        name: (int(np.iinfo(name.lower()).min), int(np.iinfo(name.lower()).max))
        for name in INTEGER_DATATYPES
    },
    **{
        name: (-float(np.finfo(dtype).max), float(np.finfo(dtype).max))
        for name, dtype in zip(FLOAT_DATATYPES, ("float16", "float32", "float64"), strict=True)
    },
}
"""The least and greatest value of each numeric datatype (a float datatype's finite range)."""
_TAKES: dict[str, str] = {
    "BOOL": "true or false",
    "BYTES": "strings",
    **{
        name: f"integers from {low} to {high}"
        for name, (low, high) in BOUNDS.items()
        if name in INTEGER_DATATYPES
    },
    **{
        name: f"finite numbers from {low:.8g} to {high:.8g}"
        for name, (low, high) in BOUNDS.items()
        if name in FLOAT_DATATYPES
    },
}
_NONE = type(None)
_min, _max = np.minimum.reduce, np.maximum.reduce
"""``ndarray.min``/``max`` without their Python wrappers (half the cost on small arrays)."""
_INTS = {int}
_NUMBERS = frozenset({int, float})
_KINDS: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str}),
    **{name: _NUMBERS for name in BOUNDS},
}
"""The Python types (JSON's, or protobuf's typed contents') each datatype's values may have."""


def check_values(
    label: str, datatype: str, values: Sequence[Any], shape: Sequence[int] = ()
) -> None:
    """A RequestError (400) naming `label` (``input 'x'``), `datatype` and the first of `values`
    that does not fit the datatype, with its index (in `shape` where that has more than one
    dimension). `values`: a tensor's values in row-major order as Python values (JSON's, or
    protobuf's typed contents'); nulls pass.

    At C speed while the values fit (a set of their types, then min and max, and a sum for a
    float's NaN or infinity); value by value only to find the one that does not."""
    kinds = set(map(type, values))
    present = values
    if _NONE in kinds:
        kinds.discard(_NONE)
        present = [value for value in values if value is not None]
    if kinds <= _KINDS[datatype] and (
        datatype not in BOUNDS or _numbers_fit(datatype, kinds, present)
    ):
        return
    for index, value in enumerate(values):
        if value is not None and not _fits(datatype, value):
            _refuse(label, datatype, value, index, shape)


def _numbers_fit(datatype: str, kinds: set[type], numbers: Sequence[int | float]) -> bool:
    """Whether ints and floats (`kinds`: their types) all fit a numeric datatype; False where
    unsure (a sum past float's range), for `_fits` to tell value by value."""
    low, high = BOUNDS[datatype]
    if not numbers or kinds <= _INTS:
        return not numbers or (low <= min(numbers) and max(numbers) <= high)
    try:  # NaN may pass min and max; the sum is NaN (or infinite) then
        if not (math.isfinite(sum(numbers)) and low <= min(numbers) and max(numbers) <= high):
            return False
    except OverflowError:  # an integer beyond float's range
        return False
    return datatype in FLOAT_DATATYPES or all(_fits(datatype, value) for value in numbers)


def _fits(datatype: str, value: Any) -> bool:
    kind = type(value)
    if kind not in _KINDS[datatype]:
        return False
    if datatype not in BOUNDS:
        return True
    low, high = BOUNDS[datatype]
    if kind is float and not (
        math.isfinite(value) and (datatype in FLOAT_DATATYPES or value.is_integer())
    ):
        return False
    return bool(low <= value <= high)


def fits(datatype: str, array: npt.NDArray[Any]) -> bool:
    """Whether a numeric array's values all fit the numeric `datatype`: one min and one max
    (NaN fails both)."""
    low, high = BOUNDS[datatype]
    return array.size == 0 or bool(low <= _min(array, None) and _max(array, None) <= high)


def check_array(
    label: str,
    datatype: str,
    array: npt.NDArray[Any],
    values: Sequence[Any],
    shape: Sequence[int] = (),
) -> None:
    """`check_values` of `values` at numpy's speed: `array` holds them as numbers (the error
    names what the request held)."""
    if not fits(datatype, array):
        check_values(label, datatype, values, shape)


def _refuse(label: str, datatype: str, value: Any, index: int, shape: Sequence[int]) -> None:
    shown = cut(repr(value)) if type(value) in _NUMBERS else describe(value)
    at = str(index)
    if len(shape) > 1:
        at = f"[{', '.join(str(int(i)) for i in np.unravel_index(index, tuple(shape)))}]"
    raise RequestError(
        400,
        f"{label} is {datatype} but holds {shown} at index {at}: {datatype} takes "
        f"{_TAKES[datatype]}",
    )
