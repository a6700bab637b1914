"""User-facing errors and warnings: one line that names the problem and the fix."""

import sys


class UserError(Exception):
    """Something the user can fix. The CLI prints it as one line and exits with status 2."""


def warn(message: str) -> None:
    """A warning for the user: one line on stderr (library warnings keep their own format)."""
    print(f"unitune: warning: {message}", file=sys.stderr, flush=True)
