"""A refused request as every protocol words it, and how a value appears in an error."""

from __future__ import annotations

from typing import Any

import orjson

_OUT_OF_RANGE = "number is infinity when parsed as double"
"""How orjson refuses 1e999 or 10**400: JSON allows them, a float64 cannot hold them."""


class RequestError(Exception):
    """A request the server cannot answer: a 4xx, never a 5xx. `column`: the schema column (or
    the protocol's input) at fault, where there is one. `close`: the body was not read to its
    end, so the connection cannot carry another request."""

    def __init__(
        self, status: int, message: str, column: str | None = None, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.column = column
        self.close = close

    def body(self) -> dict[str, Any]:
        """mlkube's own error body: ``{"error": ..., "column": ...}``."""
        return {"error": self.message} | ({"column": self.column} if self.column else {})


class Overloaded(Exception):
    """Every thread-pool slot and every place to wait for one is taken: a 503."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def decode_json(body: bytes) -> Any:
    """The body's JSON value; a 400 saying why where it is not one a model can take."""
    try:
        return orjson.loads(body)  # strict RFC 8259: no NaN, no Infinity, nor 1e999
    except orjson.JSONDecodeError as e:
        where = str(e).rpartition(": ")[2]
        if str(e).startswith(_OUT_OF_RANGE):  # valid JSON, but no number a model can take
            raise RequestError(
                400,
                f"request body has a number beyond a 64-bit float's range (about 1.8e308) at "
                f"{where}",
            ) from None
        # pos counts characters of the decoded text (doc), not bytes of the body
        if e.doc[e.pos : e.pos + 8].lower().startswith(("nan", "infinity")):
            raise RequestError(
                400,
                f"request body has NaN or Infinity at {where}: JSON (RFC 8259) has no such "
                "numbers; send null for a missing value where the model takes one",
            ) from None
        raise RequestError(400, f"request body is not valid JSON: {e}") from None


def describe(value: Any) -> str:
    """A value as an error shows it: arrays and objects by size (a repr of 1,000 nested arrays
    overflows the stack), anything else cut by `cut` (a megabyte string is not echoed back
    whole)."""
    if isinstance(value, list | dict):
        return f"{json_type(value)} of {len(value)} {'items' if len(value) != 1 else 'item'}"
    return f"{json_type(value)} {cut(repr(value))}"


def cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def json_type(value: Any) -> str:
    names = {bool: "bool", int: "integer", float: "number", str: "string", list: "array"}
    return "null" if value is None else names.get(type(value), "object")


def values(count: int) -> str:
    """ "1 value", "3 values"."""
    return f"{count} value" if count == 1 else f"{count} values"
