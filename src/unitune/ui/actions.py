"""What the UI's buttons do. One ``Ui`` object holds the server's state (the job queue, loaded chat models), so every
browser tab sees the same runs and jobs. Each action calls the function the CLI command calls; a user error comes
back as its one line, shown in the page (never only in the server's log)."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

from ..config import ChatConfig, EvalConfig, ExportConfig, UiConfig, default_run_dir, from_mapping
from ..errors import UserError, first_line
from ..methods import is_reward_model
from ..train.lock import busy_message, holder
from ..train.output_dir import run_to_keep
from ..train.records import FINISHED, record_of, run_status
from . import form, tasks
from .gates import Gates
from .jobs import Job, JobQueue
from .listing import COLUMNS, history, outcome, run_folders, run_row, status_of, updated
from .speakers import Speakers

EMBEDDED = "embedded"  # the chat's value for the embedded base model
REDRAW_S = 15.0  # a chart of runs that write is drawn again at most this often (the table and log: every REFRESH_S)


def problem(err: BaseException) -> str:
    """An error as the page shows it: the one line, never a traceback."""
    return f"**Error:** {err}" if isinstance(err, UserError) else f"**Error:** {first_line(err)}"


def unique(stem: Path, taken=lambda path: False) -> Path:
    """stem, or stem-2, stem-3...: the first that does not exist and is not taken."""
    path, n = stem, 1
    while path.exists() or taken(path):
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path


class Ui:
    def __init__(self, cfg: UiConfig):
        self.cfg = cfg
        self.root = Path(cfg.runs_dir)
        self.state_dir = self.root / ".ui"
        self.gates = Gates(self.root, cfg.allow_code, cfg.allow_dir)
        self.queue = JobQueue(self.state_dir / "jobs")
        self.speakers = Speakers()
        self._charts: dict[tuple, str] = {}
        self._chart_lock = threading.Lock()

    # ------------------------------------------------------------------ train
    def mapping(self, values: dict) -> dict:
        """The form's settings, with a new folder under the runs folder when output_dir is left empty."""
        mapping = form.to_mapping(values)
        if "output_dir" not in mapping:
            out = unique(default_run_dir(mapping["method"], mapping.get("model_name"), self.root),
                         lambda p: self.queue.busy(str(p)) is not None)
            mapping = {**mapping, "output_dir": str(out)}
        return mapping

    def preview(self, values: dict) -> tuple[str, str, str | None]:
        """The command line, the YAML and a YAML file to download."""
        try:
            mapping = self.mapping(values)
            form.check(mapping)
        except UserError as err:
            return f"# not valid yet: {err}", "", None
        text = form.yaml_text(mapping)
        path = self.state_dir / "train.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return form.command_line(mapping), text, str(path)

    def start(self, values: dict) -> str:
        try:
            mapping = self.mapping(values)
            cfg = form.check(mapping)
            self.gates.mapping(mapping)  # reward code, and the folders the job reads and writes
        except UserError as err:
            return problem(err)
        out = Path(cfg.output_dir)
        if self.queue.busy(str(out)):
            return f"**Error:** a job already writes {out}; wait for it or choose another output_dir"
        held = holder(out)
        if held is not None:
            return f"**Error:** {busy_message(out, held, 'train into')}"
        if run_to_keep(out) is not None and not cfg.overwrite_output_dir:
            return (f"**Error:** {out} holds a run ({run_to_keep(out)}); choose another output_dir, tick "
                    "overwrite_output_dir (the old run is moved aside, not deleted), or Resume it in the Runs tab")
        return self._train(mapping, f"train {cfg.method} -> {out.name}", str(out))

    def _train(self, mapping: dict, title: str, output_dir: str) -> str:
        self.state_dir.joinpath("jobs").mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "jobs" / f"{Path(output_dir).name}-{os.getpid()}-{len(self.queue.jobs) + 1}.yaml"
        config.write_text(form.yaml_text(mapping), encoding="utf-8")
        job = self.queue.submit(["train", "--config", str(config)], title, output_dir)
        ahead = sum(j.state in ("queued", "running") for j in self.queue.jobs if j is not job)
        return f"Queued **{job.title}**" + (f" behind {ahead} job(s)" if ahead else "; it starts now") + \
            ". Follow it in the Runs tab."

    def check_data(self, values: dict):
        """`unitune check` on the form's data settings, as a job: yields (status line, output) while it waits and
        runs, then the check report and token view."""
        try:
            mapping = form.to_mapping(values)
            self.gates.mapping(mapping)
            argv = tasks.check_argv(mapping)
        except UserError as err:
            yield problem(err), ""
            return
        job = self.queue.submit(argv, "check data")
        yield from tasks.follow(self.queue, job, lambda line, tail: (line, tail), tasks.check_result)

    def upload(self, path: str | None) -> str | None:
        """Copy an uploaded data file beside the runs (Gradio's upload cache is temporary); its path for --dataset."""
        if not path:
            return None
        source = Path(path)
        folder = self.state_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[\s,]+", "_", source.name)  # the dataset field splits sources on spaces and commas
        target, n = folder / name, 1
        while target.exists() and target.read_bytes() != source.read_bytes():  # never replace what a run used
            n += 1
            target = folder / f"{Path(name).stem}-{n}{source.suffix}"
        shutil.copyfile(source, target)
        return str(target)

    # ------------------------------------------------------------------ runs
    def runs(self) -> list[Path]:
        return run_folders(self.root)

    def finished_runs(self) -> list[str]:
        return [p.name for p in self.runs() if run_status(p) == FINISHED]

    def table(self) -> list[list]:
        rows = [[job.title, job.kind, "queued", "", "", ""] for job in self.queue.jobs if job.state == "queued"]
        folders = self.runs()
        written = {p.resolve() for p in folders}
        failed = [job for job in self.queue.jobs if job.state == "failed" and job.kind != "check" and (
            job.output_dir is None or Path(job.output_dir).resolve() not in written)]  # check: on the Train tab
        for job in failed[-5:]:  # jobs that ended before writing a run (or evaluations): their error line
            rows.append([job.title, job.kind, f"failed: {job.error_line()}", "", "", ""])
        last = {Path(job.output_dir).resolve(): job for job in self.queue.jobs if job.output_dir}
        running = self.queue.running
        for folder in folders:
            job = last.get(folder.resolve())
            rows.append(run_row(folder, job is running and job is not None, outcome(folder, job)))
        return rows or [["(no runs yet: start one in the Train tab)", "", "", "", "", ""]]

    def chart(self, folders: list[Path]) -> str:
        """The report's overlay chart of these runs against steps, as an <img> ("" when nothing is logged yet).
        Drawn again when a run wrote something, at most every REDRAW_S while runs write: a drawing costs ~0.2 s of
        CPU, taken from the training beside it (bench/ui_overhead.py). pyplot is not thread-safe; every tab asks."""
        from ..evaluate.charts import overlay_png

        key = tuple((str(f), updated(f)) for f in folders if f.is_dir())
        names = tuple(name for name, _ in key)
        with self._chart_lock:
            drawn = self._charts.get(names)
            if drawn is not None and (drawn[0] == key or (drawn[2] and time.monotonic() - drawn[1] < REDRAW_S)):
                return drawn[2]
            png = overlay_png([(Path(f).name, history(Path(f))) for f, _ in key], by_progress=False)
            if len(self._charts) >= 8 and names not in self._charts:
                self._charts.pop(next(iter(self._charts)))
            html = f"<img alt='training curves' src='data:image/png;base64,{png}'>" if png else ""
            self._charts[names] = (key, time.monotonic(), html)
            return html

    def live_run(self) -> Path | None:
        """The folder the running training job writes."""
        running = self.queue.running
        if running is None or running.kind != "train" or not running.output_dir:  # check, export, eval: no curve
            return None
        if not Path(running.output_dir).is_dir():
            return None
        return Path(running.output_dir)

    def job_log(self) -> tuple[str, str]:
        """The running job's output, else the last job's: its title and the tail of its log."""
        job: Job | None = self.queue.running or next(
            (j for j in reversed(self.queue.jobs) if j.state not in ("queued", "cancelled")), None)
        if job is None:
            return "job output", ""
        return f"job output: {job.title} ({job.state})", job.tail()

    def stop(self) -> str:
        job = self.queue.running or next((j for j in self.queue.jobs if j.state == "queued"), None)
        return self.queue.stop(job) if job else "nothing is running"

    def resume(self, names: list[str]) -> str:
        """Continue interrupted runs with the settings their record holds (the batch as it was given)."""
        messages = []
        for name in names or []:
            folder = self.root / name
            record = record_of(folder) or {}
            if run_status(folder) == FINISHED or "settings" not in record:
                messages.append(f"{name}: not resumable ({run_status(folder)}); only interrupted runs continue")
                continue
            if self.queue.busy(str(folder)):
                messages.append(f"{name}: a job is already running or queued for it")
                continue
            held = holder(folder)
            if held is not None:
                messages.append(f"**Error:** {name}: {busy_message(folder, held, 'resume the run in')}")
                continue
            settings = {k: v for k, v in record["settings"].items() if k not in form.BUTTON_FLAGS}
            if record.get("batch_merged_from"):
                settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"] = \
                    record["batch_merged_from"]
            settings |= {"resume": True, "overwrite_output_dir": False, "output_dir": str(folder)}
            try:  # a record may come from anyone: its reward code and paths pass the gates Start applies
                self.gates.mapping(settings)
            except UserError as err:
                messages.append(f"**Error:** {name}: {err}")
                continue
            messages.append(self._train(settings, f"resume {name}", str(folder)))
        return "\n\n".join(messages) or "Select the interrupted runs to resume."

    def evaluate(self, names: list[str], max_samples, skip_base: bool) -> str:
        finished = set(self.finished_runs())
        chosen = [n for n in names or [] if n in finished]
        if not chosen:
            return "Select one or more finished runs to evaluate."
        try:
            for name in chosen:  # a folder named --flag would be read as one by the eval job's command line
                self.gates.run(self.root / name)
            cfg = from_mapping(EvalConfig, {"runs_dir": str(self.root), "runs": chosen, "skip_base": bool(skip_base),
                                            "max_samples": max_samples or 100}, "the form")
        except UserError as err:
            return problem(err)
        argv = ["eval", "--runs_dir", cfg.runs_dir, "--runs", *cfg.runs, "--max_samples", str(cfg.max_samples),
                "--skip_base", str(cfg.skip_base).lower()]
        job = self.queue.submit(argv, f"evaluate {', '.join(chosen)}")
        return f"Queued **{job.title}**; the metrics appear below when it is done."

    def results_version(self) -> float:
        """Changes whenever the evaluation results are rewritten."""
        path = self.root / "evaluation_results.json"
        return path.stat().st_mtime if path.is_file() else 0.0

    def results(self) -> tuple[list[list], list[str], str, list[str]]:
        """The evaluation table (header, rows), the report's charts and its files, from the last evaluation."""
        from ..evaluate.charts import chart_images
        from ..evaluate.report import TABLE_KEYS, fmt, load_results, ordered, table_keys

        path = self.root / "evaluation_results.json"
        if not path.is_file():
            return [], ["run", *TABLE_KEYS], "", []
        try:
            entries = ordered(load_results(path))
        except (UserError, OSError, ValueError) as err:
            return [], ["run", *TABLE_KEYS], problem(err), []
        keys = table_keys(entries)
        rows = [[name, *(fmt(result.get(key)) for key in keys)] for name, result in entries]
        files = [str(p) for p in (self.root / "report.html", self.root / "report.md", path) if p.is_file()]
        with self._chart_lock:
            charts = "".join(chart_images(entries))
        return rows, ["run", *keys], charts, files

    # ------------------------------------------------------------------ chat
    def chat_choices(self) -> list[tuple[str, str]]:
        """The embedded model, each run's base model, and every finished run that writes replies (no reward model)."""
        bases = {EMBEDDED: "base: the embedded SmolLM2-135M-Instruct"}
        runs = []
        for folder in self.runs():
            if status_of(folder) != FINISHED or is_reward_model((record_of(folder) or {}).get("method")):
                continue
            base = (record_of(folder) or {}).get("model_name")  # None: the embedded model, listed first
            if base and self.gates.readable("model_name", base):
                bases.setdefault(base, f"base: {base}")
            runs.append((f"run: {folder.name}", str(folder)))
        return [(label, value) for value, label in bases.items()] + runs

    def stream_reply(self, source: str, history: list[dict], message: str, cfg: ChatConfig):
        return self.speakers.stream_reply(None if source == EMBEDDED else source, history, message, cfg)

    def chat_shown(self, *sources: str) -> None:
        """The Chat tab now shows these models: free the others."""
        self.speakers.keep([None if source == EMBEDDED else source for source in sources if source])

    # ------------------------------------------------------------------ export
    def export(self, run: str, fmt: str, quant: str, merge_base: str, output: str):
        """unitune export as a job, into a new folder under the runs folder (<runs>/exported/<run>-<quant> unless
        given): yields (status line, files) while it waits and runs, then the files to download."""
        if not run:
            yield "Pick a finished run to export.", []
            return
        try:
            output = (output or "").strip()
            self.gates.write("output", output)
            self.gates.run(self.root / run)
            name = f"{run}-{quant if fmt == 'gguf' else fmt}"
            folder = Path(output) if output else unique(self.root / "exported" / name,
                                                        lambda p: self.queue.busy(str(p)) is not None)
            cfg = ExportConfig(run=str(self.root / run), output=str(folder), format=fmt,
                               quant=quant if fmt == "gguf" else None, merge_base=merge_base)
        except UserError as err:
            yield problem(err), []
            return
        if self.queue.busy(str(folder)):
            yield f"**Error:** a job already writes {folder}; wait for it or choose another output folder", []
            return
        job = self.queue.submit(tasks.export_argv(cfg), f"export {run} -> {folder.name}", str(folder))
        yield from tasks.follow(self.queue, job, lambda line, tail: (tasks.running_text(line, tail), []),
                                lambda job: tasks.export_result(job, folder))

    def close(self) -> None:
        self.queue.shutdown()


__all__ = ["COLUMNS", "EMBEDDED", "Ui", "problem"]
