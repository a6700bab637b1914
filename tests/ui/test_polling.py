"""The Runs tab's polling reads only what changed: a second tick over unchanged runs opens no file, a grown run log
is read on from where the last read stopped, a job log of many MB is tailed from its end; and the Chat tab holds at
most the two models it shows."""

import gc
import json
import os
import sys
import weakref
from pathlib import Path

import pytest

from unitune.config import UiConfig
from unitune.train.live_log import LOG_FILE, read_log
from unitune.ui import watch
from unitune.ui.jobs import Job

OPENED: list[str] = []
WATCHING: list[Path] = []


def _audit(event, args):
    if event == "open" and WATCHING and isinstance(args[0], (str, bytes, Path)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path.startswith(str(WATCHING[0])):
            OPENED.append(path)


sys.addaudithook(_audit)  # for the whole session, inert unless a test watches a folder


def opened_during(folder: Path, action) -> list[str]:
    """The files under ``folder`` that ``action()`` opened (builtins.open, io.open, os.open: the "open" audit event)."""
    OPENED.clear()
    WATCHING[:] = [folder.resolve()]
    try:
        action()
    finally:
        WATCHING.clear()
    return list(OPENED)


def write_run(folder: Path, status: str, steps: int, **extra) -> None:
    folder.mkdir(parents=True)
    (folder / "unitune_run.json").write_text(json.dumps({"method": "sft", "status": status, **extra}))
    log = [{"event": "begin", "step": 0, "max_steps": steps}] + [{"step": s, "max_steps": steps, "loss": 3.0 - s / 10}
                                                                  for s in range(1, steps + 1)]
    (folder / LOG_FILE).write_text("".join(json.dumps(e) + "\n" for e in log))
    if status == "finished":
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": log[1:]}))


@pytest.fixture
def ui(tmp_path, monkeypatch):
    from unitune.ui.actions import Ui

    monkeypatch.chdir(tmp_path)
    ui = Ui(UiConfig(runs_dir=str(tmp_path / "runs")))
    yield ui
    ui.close()


def test_a_second_tick_with_nothing_changed_opens_no_file(ui, tmp_path):
    from unitune.ui.refresh import poll

    runs = ui.root
    write_run(runs / "sft_done", "finished", 5)
    write_run(runs / "sft_half", "interrupted", 3, global_step=2)
    (runs / "sft_half" / "checkpoint-2").mkdir()
    (runs / "evaluation_results.json").write_text(json.dumps({"sft_done": {"test_loss": 1.5}}))
    log = runs / ".ui" / "jobs" / "job-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("$ unitune eval\nunitune: error: no finished runs\n")
    ui.queue.jobs.append(Job(1, ["eval"], "evaluate sft_done", log, None, "failed", 2))

    ticks: list = []
    first = opened_during(tmp_path, lambda: ticks.append(poll(ui, ["sft_done"], {})))
    assert any(p.endswith("unitune_run.json") for p in first) and any(p.endswith("job-1.log") for p in first)
    assert "<img" in ticks[0].selected_chart and ticks[0].results[0][0][0] == "sft_done"
    seen = ticks[0].seen
    again: list = []
    assert opened_during(tmp_path, lambda: again.append(poll(ui, ["sft_done"], seen))) == []
    tick = again[0]
    assert sorted(row[:5] for row in tick.table) == [
        ["evaluate sft_done", "eval", "failed: unitune: error: no finished runs", "", ""],
        ["sft_done", "sft", "finished", "5/5", "2.5000"],
        ["sft_half", "sft", "interrupted at step 2 (Resume continues it)", "3/3", "2.7000"]]
    assert tick.results is None and "no finished runs" in tick.log_tail
    assert tick.selected_chart is None and tick.live_chart is None  # unchanged: not sent to the tab again

    # a run that writes is read again, and only it
    with open(runs / "sft_half" / LOG_FILE, "a") as handle:
        handle.write(json.dumps({"event": "begin", "step": 2, "max_steps": 4}) + "\n")
        handle.write(json.dumps({"step": 3, "max_steps": 4, "loss": 1.25}) + "\n")
    later = opened_during(tmp_path, lambda: again.append(poll(ui, [], seen)))
    assert later and all("sft_half" in p for p in later)
    assert next(row for row in again[-1].table if row[0] == "sft_half")[3:5] == ["3/4", "1.2500"]
    assert again[-1].selected_chart == ""  # another selection: its chart is sent


def test_a_growing_run_log_is_read_on_from_where_the_last_read_stopped(tmp_path, monkeypatch):
    lines = [{"event": "begin", "step": 0, "max_steps": 9}] + [{"step": s, "loss": float(s), "pad": "x" * 200}
                                                                for s in range(1, 20001)]
    path = tmp_path / LOG_FILE
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))  # ~4.6 MB
    follower = watch.LogFollower()
    read = counting_reads(monkeypatch)
    assert follower.entries(path) == read_log(tmp_path)
    assert sum(read) == path.stat().st_size
    read.clear()
    with open(path, "a") as handle:  # a resume from step 5, then a line still being written
        handle.write(json.dumps({"event": "begin", "step": 5, "max_steps": 9}) + "\n")
        handle.write(json.dumps({"step": 6, "loss": 0.5}) + "\n" + '{"step": 7, "lo')
    entries = follower.entries(path)
    assert sum(read) < 200 and entries == read_log(tmp_path)
    assert [e["step"] for e in entries if "loss" in e] == [1, 2, 3, 4, 5, 6]
    path.write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")  # replaced by a new run: read from the start
    assert follower.entries(path) == [{"step": 1, "loss": 9.0}]


def counting_reads(monkeypatch) -> list[int]:
    """The bytes watch.py reads, one entry per read()."""
    read: list[int] = []
    real_open = open

    class Counted:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, size=-1):
            data = self.handle.read(size)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.handle, name)

    monkeypatch.setattr(watch, "open", lambda *a, **k: Counted(real_open(*a, **k)), raising=False)
    return read


def test_a_job_log_of_many_mb_is_tailed_from_its_end(tmp_path, monkeypatch):
    log = tmp_path / "job.log"
    with open(log, "w") as handle:
        for n in range(400_000):  # ~22 MB
            handle.write(f"step {n}: loss {n / 7:.6f} and some more words\n")
    read = counting_reads(monkeypatch)
    job = Job(1, ["train"], "train x", log)
    assert job.tail().splitlines() == [f"step {n}: loss {n / 7:.6f} and some more words" for n in range(399_970,
                                                                                                        400_000)]
    assert 0 < sum(read) < 64 << 10
    read.clear()
    assert job.tail() and read == []  # unchanged: not read again
    progress = tmp_path / "bar.log"  # a progress bar that never ends its line: at most TAIL_LIMIT is read
    progress.write_text("\r 1% |" * 2_000_000)
    read.clear()
    assert watch.read_tail(progress, 5) and sum(read) <= watch.TAIL_LIMIT


def test_chat_holds_at_most_the_two_models_it_shows(ui, monkeypatch):
    import unitune.deploy.chat as chat

    class Model:
        def __init__(self, source):
            self.source = source

    monkeypatch.setattr(chat, "load_speaker", Model)
    speakers = ui.speakers
    a, b = speakers.get("run-a"), speakers.get("run-b")
    gone_a, gone_b = weakref.ref(a), weakref.ref(b)
    del a, b
    speakers.get("run-a")  # used again: B is now the oldest
    speakers.get("run-c")
    assert speakers.loaded == ["run-a", "run-c"] and gone_b() is None and gone_a() is not None
    ui.chat_shown("embedded", "")  # the tab now shows the embedded model alone
    gc.collect()
    assert speakers.loaded == [] and gone_a() is None
    assert speakers.get(None).source is None and speakers.loaded == [None]
    ui.chat_shown("embedded", "run-c")
    assert speakers.loaded == [None]  # shown, not loaded before a message asks
