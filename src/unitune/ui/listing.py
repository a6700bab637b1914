"""What the Runs tab shows: every run under the runs folder with its status and progress, and its loss history
(the live log while it trains, trainer_state.json once it is done). Every open tab asks again every few seconds, so
what is read from a run's files is kept until they change (watch.py): an unchanged run costs a few stats."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..train.live_log import LOG_FILE
from ..train.lock import LOCK_FILE, holder
from ..train.records import ASIDE, FINISHED, RUN_FILE, record_of, run_status, status_line
from .jobs import Job
from .watch import LogFollower, Memo, stamp

COLUMNS = ["run", "method", "status", "step", "loss", "updated"]
STATE_FILE = "trainer_state.json"

RECHECK_S = 10.0  # a run that says it is running is looked at again this often: its process may have died silently

_memo = Memo(1024)
_logs = LogFollower()


def recheck(value) -> float | None:
    return RECHECK_S if "running" in str(value) else None


def files_of(folder: Path) -> tuple:
    """The stamp of what a run's row and history are read from. The folder's own stamp changes when a file in it is
    made, renamed over (an atomic write) or removed: rank failures, checkpoints, a lock, an adapter."""
    return stamp(folder, folder / RUN_FILE, folder / LOG_FILE, folder / STATE_FILE)


def status_of(folder: Path) -> str | None:
    """run_status, read again only when the run's files changed."""
    folder = Path(folder)
    return _memo.get(("status", str(folder)), files_of(folder), lambda: run_status(folder), recheck)


def run_folders(root: Path) -> list[Path]:
    """Run folders directly under root, newest first (moved-aside runs and hidden folders left out; exports, which
    have no run record, too)."""
    if not Path(root).is_dir():
        return []
    found = [p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".") and ASIDE not in p.name
             and (status_of(p) is not None or (p / LOCK_FILE).exists())]  # locked: still preparing its data
    return sorted(found, key=updated, reverse=True)


def history(folder: Path) -> list[dict]:
    """The run's logs: trainer_state.json's log_history when it has one and the run is over, else the live log
    (read on from where the last read stopped)."""
    folder = Path(folder)
    if status_of(folder) == FINISHED and (folder / STATE_FILE).is_file():
        return _memo.get(("history", str(folder)), files_of(folder), lambda: finished_history(folder))
    return _logs.entries(folder / LOG_FILE)


def finished_history(folder: Path) -> list[dict]:
    try:
        return json.loads((folder / STATE_FILE).read_text()).get("log_history", [])
    except (OSError, ValueError, AttributeError):
        return _logs.entries(folder / LOG_FILE)


def progress(entries: list[dict]) -> tuple[int | None, int | None]:
    last = next((e for e in reversed(entries) if "step" in e), None)
    return (last["step"], last.get("max_steps")) if last else (None, None)


def status_text(folder: Path, live: bool) -> str:
    """running (this UI's job, or started elsewhere), finished, interrupted (resumable), failed: the error, or
    broken (a record that cannot be read)."""
    record = record_of(folder)
    if record == {} and (folder / RUN_FILE).exists():
        return f"broken: its {RUN_FILE} cannot be read"
    held = None if live else holder(folder)
    if held is not None:  # a process trains here: the CLI, another UI, a SLURM job
        return f"running (pid {held.get('pid')} on {held.get('host')} since {held.get('since')})"
    record = record or {}
    status = run_status(folder)
    if status == "failed":
        return status_line(folder)  # "failed: <its error line>", as eval and report say it
    if status == "interrupted":
        step = record.get("global_step")
        return f"interrupted{f' at step {step}' if step is not None else ''} (Resume continues it)"
    if status == "running" and not live:  # no live lock: its process is gone
        return "stopped: its process is gone (killed before it could say so)"
    return status


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds}s ago" if seconds < 90 else f"{seconds // 60} min ago" if seconds < 5400 else \
        f"{seconds // 3600} h ago"


def run_row(folder: Path, live: bool, status: str | None = None) -> list:
    """The run's row; ``status`` replaces its own status text (what became of this UI's job for it). All but its age
    is read again only when the run's files changed."""
    folder = Path(folder)
    row = _memo.get(("row", str(folder), live, status), files_of(folder), lambda: fresh_row(folder, live, status),
                    recheck)
    return [*row, age(time.time() - updated(folder))]


def fresh_row(folder: Path, live: bool, status: str | None) -> list:
    record = record_of(folder) or {}
    entries = history(folder)
    step, total = progress(entries)
    losses = [e["loss"] for e in entries if isinstance(e.get("loss"), (int, float))]
    return [folder.name, record.get("method", ""), status or status_text(folder, live),
            "" if step is None else f"{step}/{total}" if total else str(step), f"{losses[-1]:.4f}" if losses else ""]


def updated(folder: Path) -> float:
    """When the run last wrote its record or log (appending to a file leaves the folder's own time alone)."""
    found = stamp(folder, folder / RUN_FILE, folder / LOG_FILE)  # None: not written yet, or just moved aside
    return max((s[2] for s in found if s is not None), default=0) / 1e9


def outcome(folder: Path, job: Job | None) -> str | None:
    """What the run's own record cannot say about the last job for it: an error it died of after the folder was
    made (killed, or a failed resume), or a stop before its first checkpoint."""
    status = status_of(folder)
    if job is not None and job.state == "failed" and status != "failed":
        return f"failed: {job.error_line()}"
    if job is not None and job.state == "stopped" and status == "running":
        return "stopped before its first checkpoint (Start it again)"
    return None
