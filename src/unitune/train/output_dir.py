"""The run folder, ready to train into: only a new folder, an empty one or an earlier run, locked for this process; a
run already there is continued, moved aside (never deleted), or protected."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import UserError
from ..files import protected_folders
from ..machine import is_main_process
from .lock import LOCK_FILE, RunLock, check_free, holder, launch_id
from .records import ASIDE, FINISHED, clear_stale_failures, is_earlier_run, run_status, status_line

MODEL_CARD = "README.md"  # what TRL (every checkpoint) and PEFT (every save) write into the run folder
NOT_CONTENT = {LOCK_FILE, ".DS_Store"}  # a lock alone: a run killed at its start; Finder's file in any folder


def run_to_keep(out: Path) -> str | None:
    """The status of the run in ``out`` that training there would continue or displace; None when there is none,
    or when it stopped before its first checkpoint (nothing there to continue or to lose)."""
    status = run_status(out) if out.is_dir() else None
    if status not in (None, FINISHED) and not any(out.glob("checkpoint-*")):
        return None
    return status


def check_run_folder(out: Path) -> None:
    """Training writes checkpoints, tokenizer files and a model card (README.md) into its folder: only a new one, an
    empty one or an earlier run may take them, whatever the overwrite flag (it moves only an earlier run aside)."""
    if not out.is_dir() or is_earlier_run(out):
        return
    found = sorted(p.name for p in out.iterdir() if p.name not in NOT_CONTENT)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise UserError(f"--output_dir {out} is not a run folder (it holds {shown}); train writes only into a new "
                        "folder, an empty one or an earlier run, whatever the overwrite flag: choose another "
                        "--output_dir, e.g. runs/my_run")


def is_model_card(path: Path) -> bool:
    """A model card TRL or PEFT wrote: YAML front matter naming its library."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    front = text[3:].split("\n---", 1)[0] if text.startswith("---") else ""
    return "library_name:" in front


def check_model_card(out: Path) -> None:
    """A run folder that stays (resumed, or trained again in place) gets TRL's model card as README.md: a README.md
    there that is not one is the user's, and is never written over."""
    readme = out / MODEL_CARD
    if readme.is_file() and not is_model_card(readme):
        raise UserError(f"{readme} is not a model card, and training would write TRL's model card over it; move it "
                        "out of the run folder, or pass --overwrite_output_dir to start again in a new one (the old "
                        "folder, README.md included, is moved aside)")


def prepare_output_dir(output_dir: str, overwrite: bool, resume: bool, lock: RunLock) -> Path:
    """The run folder, ready to train into, locked by ``lock`` on rank 0 before anything is written there. A run
    already there is continued (--resume, true or auto), moved aside to <output_dir>.old-<timestamp>
    (--overwrite_output_dir; never deleted), or protected with a one-line error. Whether --resume auto finds a
    checkpoint to continue or starts fresh is resume.resume_target's call."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file; pass a folder path")
    if overwrite and resume:
        raise UserError("--overwrite_output_dir and --resume contradict each other; pass one of them")
    if not is_main_process() and held_by_this_launch(out):  # rank 0 checked the folder and goes on in it
        clear_stale_failures(out)
        return out
    check_run_folder(out)
    doing = "resume the run in" if resume else "train into"
    mkdir(out)
    if is_main_process():
        lock.take(out, doing)  # a live holder refuses here, before this process changes anything
    elif launch_id():  # a rank > 0 refuses only another launch's lock: its own rank 0 takes it, maybe not yet
        check_free(out, doing)
    status = run_to_keep(out)
    if status is None or resume:  # the folder stays: an earlier attempt's failure records go (overwrite moves them)
        check_model_card(out)
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
            lock.moved(move_aside(out))  # still held: no one takes the old run while it moves
            mkdir(out)
            lock.take(out, doing)  # then the old run's lock goes
    return out


def held_by_this_launch(out: Path) -> bool:
    """Whether this launch's rank 0 holds ``out``'s lock. The ranks prepare in turn (run.ranks_in_turn); a rank that
    comes after rank 0 finds the folder as rank 0 left it, writing into it (a record's temp file before its rename
    read as "not a run folder": rank 1 refused, and on two nodes rank 0 waited for it for the group's timeout)."""
    found = holder(out) if launch_id() else None
    return found is not None and found.get("launch") == launch_id()


def mkdir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write to --output_dir {out} ({err.strerror}); choose a writable folder") from None


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
