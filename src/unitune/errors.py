"""User-facing errors and warnings: one line that names the problem and the fix."""

import sys


class UserError(Exception):
    """Something the user can fix. The CLI prints it as one line and exits with status 2."""


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the CLI prints it and exits with ``code``."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def warn(message: str) -> None:
    """A warning for the user: one line on stderr (library warnings keep their own format)."""
    print(f"unitune: warning: {message}", file=sys.stderr, flush=True)
