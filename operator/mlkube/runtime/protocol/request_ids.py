"""Request ids: the body's ``id``, else the ``X-Request-ID`` header, else a new uuid4. Every
answered row is ``<id>-<row>`` in the inference log, and ``/feedback`` names rows so."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from mlkube.runtime.protocol.errors import RequestError, cut, describe
from mlkube.runtime.protocol.http import REQUEST_ID_HEADER

MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(f"[!-~]{{1,{MAX_REQUEST_ID_LENGTH}}}")
"""Visible ASCII, no spaces: an id reads the same in a header, a log line and a Parquet column."""


def request_id_of(body_id: Any, headers: Iterable[tuple[bytes, bytes]]) -> str:
    """A prediction request's id: the body's ``id``, else the ``X-Request-ID`` header, else a new
    uuid4 (hex). The body wins: the client wrote it for this request, where a header may have been
    added on the way (ingress-nginx sets ``X-Request-ID`` on every request it forwards). A bad one
    is a 400: it would name rows that feedback could not name back."""
    if body_id is not None:
        if type(body_id) is str and _REQUEST_ID.fullmatch(body_id):
            return body_id
        raise RequestError(400, f'"id" must be {_ID_RULE}, got {describe(body_id)}')
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
            raise RequestError(400, f"X-Request-ID must be {_ID_RULE}, got {cut(repr(text))}")
    return uuid4_hex()


_ID_RULE = f"a string of 1 to {MAX_REQUEST_ID_LENGTH} visible ASCII characters (no spaces)"
_UUID4_KEEP = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


class _Entropy:
    """``os.urandom`` read 4 KiB at a time: one system call per 256 ids instead of one each
    (under load the call cost several µs a request). Used from the event loop only; a forked
    child starts with none of its parent's bytes, so no two processes give the same id."""

    SIZE = 4096

    def __init__(self) -> None:
        self._bytes = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._bytes, self._at = b"", 0

    def take(self) -> int:
        """128 fresh random bits."""
        at = self._at
        if at + 16 > len(self._bytes):
            self._bytes, at = os.urandom(self.SIZE), 0
        self._at = at + 16
        return int.from_bytes(self._bytes[at : at + 16])


_ENTROPY = _Entropy()


def uuid4_hex() -> str:
    """``uuid.uuid4().hex`` in ~0.5 µs instead of 1.8: the same bits, without a UUID object."""
    return "%032x" % (_ENTROPY.take() & _UUID4_KEEP | _UUID4_SET)
