"""What the Runs tab shows: every run under the runs folder with its status and progress, and its loss history
(the live log while it trains, trainer_state.json once it is done)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..train.live_log import LOG_FILE, read_log
from ..train.records import ASIDE, FINISHED, RUN_FILE, record_of, run_status, status_line

COLUMNS = ["run", "method", "status", "step", "loss", "updated"]


def run_folders(root: Path) -> list[Path]:
    """Run folders directly under root, newest first (moved-aside runs and hidden folders left out)."""
    if not Path(root).is_dir():
        return []
    found = [p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".") and ASIDE not in p.name
             and run_status(p) is not None]
    return sorted(found, key=updated, reverse=True)


def history(folder: Path) -> list[dict]:
    """The run's logs: trainer_state.json's log_history when it has one and the run is over, else the live log."""
    state = Path(folder) / "trainer_state.json"
    if run_status(folder) == FINISHED and state.is_file():
        try:
            return json.loads(state.read_text()).get("log_history", [])
        except (OSError, ValueError):
            pass
    return read_log(folder)


def progress(entries: list[dict]) -> tuple[int | None, int | None]:
    last = next((e for e in reversed(entries) if "step" in e), None)
    return (last["step"], last.get("max_steps")) if last else (None, None)


def status_text(folder: Path, live: bool) -> str:
    """running (this UI's job, or started elsewhere), finished, interrupted (resumable), failed: the error, or
    broken (a record that cannot be read)."""
    record = record_of(folder)
    if record == {} and (folder / RUN_FILE).exists():
        return f"broken: its {RUN_FILE} cannot be read"
    record = record or {}
    status = run_status(folder)
    if status == "failed":
        return status_line(folder)  # "failed: <its error line>", as eval and report say it
    if status == "interrupted":
        step = record.get("global_step")
        return f"interrupted{f' at step {step}' if step is not None else ''} (Resume continues it)"
    if status == "running" and not live:
        return "running outside this UI (or killed before it could say so)"
    return status


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds}s ago" if seconds < 90 else f"{seconds // 60} min ago" if seconds < 5400 else \
        f"{seconds // 3600} h ago"


def run_row(folder: Path, live: bool, status: str | None = None) -> list:
    """The run's row; ``status`` replaces its own status text (what became of this UI's job for it)."""
    record = record_of(folder) or {}
    entries = history(folder)
    step, total = progress(entries)
    losses = [e["loss"] for e in entries if isinstance(e.get("loss"), (int, float))]
    return [folder.name, record.get("method", ""), status or status_text(folder, live),
            "" if step is None else f"{step}/{total}" if total else str(step),
            f"{losses[-1]:.4f}" if losses else "", age(time.time() - updated(folder))]


def updated(folder: Path) -> float:
    """When the run last wrote its record or log (appending to a file leaves the folder's own time alone)."""
    times = []
    for path in (folder, folder / RUN_FILE, folder / LOG_FILE):
        try:
            times.append(path.stat().st_mtime)
        except OSError:  # not written yet, or the run was just moved aside
            pass
    return max(times, default=0.0)
