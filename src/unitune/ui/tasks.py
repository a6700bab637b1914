"""Check data and Export as jobs of the one queue, each a `unitune check` or `unitune export` process, so the UI's own
process never tokenizes a dataset or merges a model: the command line each job runs, what the page shows while the
job waits and runs (its output's tail), and the result read back from its log and files once it is done."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import CheckConfig, ExportConfig, from_mapping
from .jobs import Job, JobQueue

WAIT_S = 1.0  # how often a page waiting on its job looks again
CHECK_KEYS = ("dataset", "model_name", "max_length", "chat_template", "columns")  # the Train form's fields check takes
SHOW_TOKENS = 2  # rows per split in the token view
OUTPUT_LINES = 2000  # a check report with its token view is a few hundred lines
DOWNLOAD_LIMIT = 2 << 30  # bigger exports are named by path, not copied into Gradio's cache for a download link
ERROR = "unitune: error: "


def flags(command: str, settings: dict) -> list[str]:
    """``unitune <command>``'s arguments for these settings (None: left to the default)."""
    argv = [command]
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def check_argv(mapping: dict) -> list[str]:
    """`unitune check` on the Train form's data settings, with the token view; a bad value is the CLI's one line."""
    settings = {k: mapping[k] for k in CHECK_KEYS if k in mapping} | {"method": mapping["method"],
                                                                       "show_tokens": SHOW_TOKENS}
    from_mapping(CheckConfig, settings, "the form")
    return flags("check", settings)


def export_argv(cfg: ExportConfig) -> list[str]:
    return flags("export", {"run": cfg.run, "output": cfg.output, "format": cfg.format,
                            "quant": cfg.quant if cfg.format == "gguf" else None, "merge_base": cfg.merge_base})


def waiting(queue: JobQueue, job: Job) -> tuple[str, str]:
    """(a line saying where the job is, the tail of its output so far)."""
    if job.state == "queued":
        ahead = [j for j in queue.jobs[: queue.jobs.index(job)] if j.state in ("queued", "running")]
        if not ahead:
            return f"Queued **{job.title}**; it starts now.", ""
        return f"Queued **{job.title}** behind {len(ahead)} job(s); it runs when they are done.", ""
    return f"**{job.title}** is running.", job.tail(20)


def follow(queue: JobQueue, job: Job, show, done, every: float = WAIT_S):
    """What the page shows for ``job``, yielded each time it changes: show(line, tail) while the job waits and runs,
    done(job) once it ended."""
    shown = None
    while job.state in ("queued", "running"):
        now = show(*waiting(queue, job))
        if now != shown:
            shown = now
            yield now
        time.sleep(every)
    yield done(job)


def output(job: Job) -> str:
    """What the job printed, without the command line the log starts with."""
    lines = job.tail(OUTPUT_LINES).splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("$ unitune") else lines)


def failure(job: Job) -> str:
    """Why a job did not finish, as one line of the page."""
    if job.state == "cancelled":
        return f"**{job.title}** was cancelled before it started."
    if job.state == "stopped":
        return f"**{job.title}** was stopped."
    line = job.error_line()
    return f"**Error:** {line[len(ERROR):] if line.startswith(ERROR) else line}"


def check_result(job: Job) -> tuple[str, str]:
    """(status line, the check report and token view). Exit code 1: a split cannot feed the method, which the report
    says; any other failure is its one line."""
    if job.state == "finished" or job.returncode == 1:
        return "", output(job)
    return failure(job), ""


def export_result(job: Job, folder: Path) -> tuple[str, list[str]]:
    """(status line, the exported files small enough for a download link)."""
    if job.state != "finished":
        return failure(job), []
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    small = [str(p) for p in files if p.stat().st_size <= DOWNLOAD_LIMIT]
    big = [p.name for p in files if p.stat().st_size > DOWNLOAD_LIMIT]
    note = f" ({', '.join(big)} too big for a download link: copy it from the folder)" if big else ""
    return f"Exported to `{folder}`{note}.", small


def running_text(line: str, tail: str) -> str:
    """A waiting line and its output as Markdown."""
    return f"{line}\n\n```\n{tail}\n```" if tail else line


__all__ = ["check_argv", "check_result", "export_argv", "export_result", "follow", "running_text"]
