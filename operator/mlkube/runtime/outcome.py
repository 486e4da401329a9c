"""How a runtime command ends; kept free of heavy imports so the operator can share it."""

from __future__ import annotations

EXIT_PERMANENT = 3
"""A failure that retrying cannot fix; the Job's podFailurePolicy fails at once on it."""


class RunFailure(Exception):
    """A run that cannot succeed as specified; `reason` becomes the condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
