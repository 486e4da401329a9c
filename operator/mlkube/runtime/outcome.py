"""How a runtime command ends; kept free of heavy imports so the operator can share it."""

from __future__ import annotations

EXIT_PERMANENT = 3
"""A failure that retrying cannot fix; the Job's podFailurePolicy fails at once on it."""

EXIT_TRANSIENT = 1
"""A failure that a retry may fix (the store or the network was unavailable)."""

MESSAGE_LIMIT = 1024


class RunFailure(Exception):
    """A run that cannot succeed as specified; `reason` becomes the condition's reason.

    `permanent` failures (the default) exit with EXIT_PERMANENT and are not retried.
    """

    def __init__(self, reason: str, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent

    @property
    def exit_code(self) -> int:
        return EXIT_PERMANENT if self.permanent else EXIT_TRANSIENT


def one_line(error: BaseException) -> str:
    """An exception as one status-message line: its type and the first line of its text.

    Libraries put advice and tracebacks on later lines; a condition message is read in a table.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text[:MESSAGE_LIMIT]
