"""unitune_log.jsonl in a run folder: the training logs (loss, reward, eval) and the step, one JSON line each, as
they happen. trainer_state.json is written only at checkpoints and at the end; this file is what the web UI (and
`tail -f`) reads to follow a run that is still training.

    {"event": "begin", "step": 0, "max_steps": 12}
    {"step": 1, "max_steps": 12, "loss": 3.21, "learning_rate": 0.0002, ...}
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

LOG_FILE = "unitune_log.jsonl"


class LiveLog(TrainerCallback):
    """Appends each log, and each step's progress, to the run's unitune_log.jsonl (rank 0 only)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOG_FILE

    def _append(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=float) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._append({"event": "begin", "step": state.global_step, "max_steps": state.max_steps})

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._append({"step": state.global_step, "max_steps": state.max_steps})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self._append({"step": state.global_step, "max_steps": state.max_steps, **logs})


def read_log(folder: Path) -> list[dict]:
    """The run's log entries in order. A resume starts again from its checkpoint's step, so the entries past that
    step from before the stop are dropped: the result is the history the resumed run really has."""
    path = Path(folder) / LOG_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return add_entries([], lines)


def add_entries(entries: list[dict], lines: list[str]) -> list[dict]:
    """``entries`` followed by the log lines' entries; a resume's "begin" entry drops what came after its step. A line
    that is not a whole JSON object (one being written right now) is skipped."""
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        if entry.get("event") == "begin":
            entries = [e for e in entries if e.get("step", 0) <= entry.get("step", 0)]
        entries.append(entry)
    return entries
