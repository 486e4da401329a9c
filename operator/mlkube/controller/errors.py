"""One small error taxonomy for everything the API server (or the network) can answer.

Terminal errors (NotFound, Conflict, Invalid, Forbidden) mean "retrying the same request will not
help": a reconcile turns them into a condition, and the work queue, reading `terminal`, does not
retry the key but waits for a change of its object (with one slow safety look), as
controller-runtime's `reconcile.TerminalError` and kopf's `PermanentError` do. Temporary errors
(throttling, 5xx, a dropped connection, a timeout) are retried by the work queue, and only there,
with exponential backoff that honours Retry-After.
"""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """An API request failed; `message` is the API server's own words when it gave any."""

    terminal = True

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Invalid(ApiError):
    """422 (or 400): the object is refused as written; only a changed spec can fix it."""


class Forbidden(ApiError):
    pass


class Temporary(ApiError):
    """Throttled, a server error or no answer: the same request may well work later."""

    terminal = False

    def __init__(
        self, status: int, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, reason, message)
        self.retry_after = retry_after


_BY_STATUS: dict[int, type[ApiError]] = {
    400: Invalid,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Conflict,
    422: Invalid,
}


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(status: int | None, reason: str, body: Any, headers: Any = None) -> ApiError:
    """The taxonomy's error for an HTTP answer; the message is the Status object's, if any."""
    message = reason
    if isinstance(body, bytes | str) and body:
        try:
            parsed = json.loads(body)
            message = str(parsed.get("message") or reason) if isinstance(parsed, dict) else message
        except ValueError:
            message = str(body)[:1024]
    code = status or 0
    error = _BY_STATUS.get(code)
    if error is not None:
        return error(code, reason, message)
    if code == 429 or code >= 500 or code == 0:
        return Temporary(code, reason or "Unavailable", message, _retry_after(headers))
    return Invalid(code, reason, message)
