"""User-facing errors and warnings: one line that names the problem and the fix."""

import contextlib
import difflib
import sys


class UserError(Exception):
    """Something the user can fix. The CLI prints it as one line and exits with status 2."""


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the CLI prints it and exits with ``code``."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def first_line(err: BaseException, typed: bool = True) -> str:
    """An exception as one line: its type (unless ``typed`` is False) and the first line of its message."""
    text = next(iter(str(err).strip().splitlines()), "")
    if not typed:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


_recorders: list[list[str]] = []  # see recorded_warnings


_silenced: list[bool] = []  # see silenced


def warn(message: str) -> None:
    """A warning for the user: one line on stderr (library warnings keep their own format)."""
    if _silenced:
        return
    print(f"unitune: warning: {message}", file=sys.stderr, flush=True)
    for recorder in _recorders:
        recorder.append(message)


@contextlib.contextmanager
def silenced():
    """No warnings inside the block: for work done twice, such as a sample timed for an estimate."""
    _silenced.append(True)
    try:
        yield
    finally:
        _silenced.pop()


@contextlib.contextmanager
def recorded_warnings():
    """The warnings given inside the block, as a list (kept with prepared data, and given again when it is loaded)."""
    found: list[str] = []
    _recorders.append(found)
    try:
        yield found
    finally:
        _recorders.remove(found)


def closest(word: str, options) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
