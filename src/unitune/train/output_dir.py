"""The run folder, ready to train into: a run already there is continued, moved aside (never deleted), or protected."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import UserError
from ..files import protected_folders
from ..machine import is_main_process
from .records import ASIDE, FINISHED, clear_stale_failures, run_status, status_line


def run_to_keep(out: Path) -> str | None:
    """The status of the run in ``out`` that training there would continue or displace; None when there is none,
    or when it stopped before its first checkpoint (nothing there to continue or to lose)."""
    status = run_status(out) if out.is_dir() else None
    if status not in (None, FINISHED) and not any(out.glob("checkpoint-*")):
        return None
    return status


def prepare_output_dir(output_dir: str, overwrite: bool, resume: bool) -> Path:
    """The run folder, ready to train into. A run already there is continued (--resume, true or auto), moved aside to
    <output_dir>.old-<timestamp> (--overwrite_output_dir; never deleted), or protected with a one-line error.
    Whether --resume auto finds a checkpoint to continue or starts fresh is resume.resume_target's call."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file; pass a folder path")
    if overwrite and resume:
        raise UserError("--overwrite_output_dir and --resume contradict each other; pass one of them")
    status = run_to_keep(out)
    if status is None or resume:  # the folder stays: an earlier attempt's failure records go (overwrite moves them)
        clear_stale_failures(out)
    if status is not None and not resume:
        if not overwrite:
            what = "a finished run" if status == FINISHED else f"an unfinished run ({status_line(out)})"
            raise UserError(f"{out} already holds {what}; pass --resume to continue it, --overwrite_output_dir to "
                            "move it aside and start again, or choose another --output_dir")
        if out.resolve() in protected_folders():
            raise UserError(f"--output_dir {out} is {protected_folders()[out.resolve()]}; train into a folder of "
                            "its own")
        if is_main_process():
            move_aside(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if is_main_process():  # the other ranks' files would race rank 0's move
            probe = out / f".unitune-write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to --output_dir {out} ({err.strerror}); choose a writable folder") from None
    return out


def move_aside(out: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = out.with_name(f"{out.name}{ASIDE}{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}{ASIDE}{stamp}-{n}")
    try:
        os.replace(out, aside)
    except OSError as err:
        raise UserError(f"cannot move the previous run in {out} aside to {aside} ({err.strerror}); move it yourself "
                        "or choose another --output_dir") from None
    print(f"unitune: moved the previous run in {out} aside to {aside} (nothing deleted)", flush=True)
    return aside
