"""``POST /feedback``: ground truth for answered rows, read into the feedback log's columns."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt

from mlkube.layout import FEEDBACK_LABEL_COLUMN, FEEDBACK_REQUEST_ID_COLUMN, RESERVED_COLUMN_PREFIX
from mlkube.runtime.inference_log import Values
from mlkube.runtime.protocol.columns import finite_number
from mlkube.runtime.protocol.errors import RequestError, cut, decode_json, describe
from mlkube.runtime.protocol.request_ids import MAX_REQUEST_ID_LENGTH
from mlkube.runtime.protocol.settings import DEFAULT_MAX_ROWS, ENV_MAX_ROWS

MAX_ROW_ID_LENGTH = MAX_REQUEST_ID_LENGTH + 21
"""The longest ``<id>-<row>`` this server gives: an id, a dash and up to 20 digits."""
MAX_OUTCOME_NAME_LENGTH = 63
"""As a DriftMonitor's ``performance.outcomes[].name`` allows: a longer one could never be read."""
MAX_OUTCOMES = 16
"""Distinct outcome names in one /feedback request, as a DriftMonitor reads at most 16: each name
is a column of the feedback log, so without a bound one request could write thousands."""
_OUTCOME_NAME = re.compile(f"[A-Za-z_][A-Za-z0-9_.]{{0,{MAX_OUTCOME_NAME_LENGTH - 1}}}")
_FEEDBACK_FIELDS = frozenset({"requestId", "label", "outcomes"})
_SCALARS = frozenset({str, int, float, bool})


class FeedbackError(RequestError):
    """A refused ``/feedback`` item, named by its index and, where it has one, its requestId."""

    def __init__(self, message: str, index: int, row_id: str | None = None) -> None:
        where = f"feedback[{index}]" + (f" (requestId {cut(repr(row_id))})" if row_id else "")
        super().__init__(422, f"{where}: {message}")
        self.index = index
        self.row_id = row_id

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "index": self.index} | (
            {"requestId": self.row_id} if self.row_id else {}
        )


class FeedbackReader:
    """Reads ``POST /feedback`` bodies into the feedback log's columns, checked against the model:
    a classifier's label must equal one of its classes (JSON ``1`` for int classes, ``"setosa"``
    for string ones) and is stored in the classes' type; a regressor's must be a finite number.
    Outcomes are named finite numbers; a row without one of them has null there."""

    def __init__(self, classes: npt.NDArray[Any] | None, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        """`classes`: a classifier's ``classes_``; None for a regressor. `max_rows`: the most
        labels a request may hold."""
        self.classes = classes
        self.max_rows = max_rows
        self._positions: dict[Any, int] | None = (
            None if classes is None else {label: i for i, label in enumerate(classes.tolist())}
        )
        self._bool_classes = classes is not None and classes.dtype.kind == "b"

    def read(self, body: bytes) -> dict[str, Values]:
        document = decode_json(body)
        items = document.get("feedback") if type(document) is dict else None
        if type(items) is not list or not items:
            raise RequestError(
                400,
                'request body must be {"feedback": [{"requestId": "...", "label": ...}, ...]} '
                "with at least one item",
            )
        if len(items) > self.max_rows:
            raise RequestError(
                413,
                f"the request has {len(items)} labels; this server takes at most "
                f"{self.max_rows} a request ({ENV_MAX_ROWS}): split it",
            )
        row_ids: list[str] = []
        labels: list[Any] = []
        outcomes: list[dict[str, float]] = []
        names: dict[str, None] = {}  # the distinct outcome names, in the order they came
        for index, item in enumerate(items):
            if type(item) is not dict:
                raise RequestError(400, f"feedback[{index}] must be an object")
            row_id = item.get("requestId")
            if type(row_id) is not str or not 0 < len(row_id) <= MAX_ROW_ID_LENGTH:
                raise FeedbackError(
                    f"requestId must be a non-empty string of at most {MAX_ROW_ID_LENGTH} "
                    "characters, as in the answer's requestIds",
                    index,
                )
            unknown = item.keys() - _FEEDBACK_FIELDS
            if unknown:
                raise FeedbackError(
                    f"unknown field {cut(repr(min(unknown)))}; an item has requestId, label "
                    "and optionally outcomes",
                    index,
                    row_id,
                )
            if "label" not in item:
                raise FeedbackError("label is missing", index, row_id)
            labels.append(self._label(item["label"], index, row_id))
            named = _outcomes(item.get("outcomes"), index, row_id)
            outcomes.append(named)
            if named.keys() - names:
                names.update(dict.fromkeys(named))
                if len(names) > MAX_OUTCOMES:
                    raise FeedbackError(
                        f"the request names more than {MAX_OUTCOMES} outcomes "
                        f"({cut(', '.join(names))}); send at most {MAX_OUTCOMES} names",
                        index,
                        row_id,
                    )
            row_ids.append(row_id)
        columns: dict[str, Values] = {
            FEEDBACK_REQUEST_ID_COLUMN: row_ids,
            FEEDBACK_LABEL_COLUMN: (
                np.asarray(labels, dtype=np.float64)
                if self.classes is None
                else self.classes[np.asarray(labels, dtype=np.intp)]
            ),
        }
        columns.update((name, [row.get(name) for row in outcomes]) for name in names)
        return columns

    def _label(self, value: Any, index: int, row_id: str) -> Any:
        """A regressor's label as a float; a classifier's as its position in ``classes_``."""
        if self._positions is None:
            if finite_number(value):
                return float(value)
            raise FeedbackError(
                f"label must be a finite number (the model is a regressor), got {describe(value)}",
                index,
                row_id,
            )
        # bool is an int in Python (True == 1): only bool classes take JSON true/false
        if type(value) in _SCALARS and (type(value) is bool) is self._bool_classes:
            position = self._positions.get(value)
            if position is not None:
                return position
        raise FeedbackError(
            f"label {describe(value)} is not one of the model's classes "
            f"{cut(repr(list(self._positions)))}",
            index,
            row_id,
        )


def _outcomes(outcomes: Any, index: int, row_id: str) -> dict[str, float]:
    if outcomes is None:
        return {}
    if type(outcomes) is not dict:
        raise FeedbackError(
            f"outcomes must be an object of name to number, got {describe(outcomes)}",
            index,
            row_id,
        )
    for name, value in outcomes.items():
        if (
            not _OUTCOME_NAME.fullmatch(name)
            or name.startswith(RESERVED_COLUMN_PREFIX)
            or name in _FEEDBACK_FIELDS
        ):
            raise FeedbackError(
                f"outcome name {cut(repr(name))} must match [A-Za-z_][A-Za-z0-9_.]* (at most "
                f"{MAX_OUTCOME_NAME_LENGTH} characters), not start with "
                f"{RESERVED_COLUMN_PREFIX!r} and not be requestId, label or outcomes",
                index,
                row_id,
            )
        if not finite_number(value):
            raise FeedbackError(
                f"outcome {name!r} must be a finite number, got {describe(value)}",
                index,
                row_id,
            )
    return {name: float(value) for name, value in outcomes.items()}
