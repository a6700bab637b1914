"""The UI's job queue: unitune commands (train, eval, check, export) run one at a time, each in its own process, its
output in a log file, so nothing model-sized runs in the UI's own process. A job outlives the browser tab that started
it; Stop sends SIGTERM (a training run saves a checkpoint and says how to resume); shutting the UI down stops the
running job the same way and waits for it."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..train.lifecycle import EXIT_CODES
from .watch import tail

# A run stopped by SIGTERM/SIGINT exits 143/130 after its checkpoint; one stopped before it installed its handler
# (while loading the model) dies of the signal: -15/-2.
STOPPED = (*EXIT_CODES.values(), -signal.SIGTERM, -signal.SIGINT)

SECRETS = "UNITUNE_UI_"  # the UI's own variables (UNITUNE_UI_AUTH: its password): a job never inherits them


def job_env() -> dict[str, str]:
    """The environment a job runs in: the UI's, less its secrets."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(SECRETS)} | {"PYTHONUNBUFFERED": "1"}


@dataclass
class Job:
    id: int
    argv: list[str]  # after `unitune`
    title: str
    log: Path
    output_dir: str | None = None  # the run a training job writes
    state: str = "queued"  # queued, running, finished, stopped, failed, cancelled
    returncode: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.argv[0]

    def tail(self, lines: int = 30) -> str:
        """The last lines of its output, read from the log's end (and again only when the log changed)."""
        return tail(self.log, lines)

    def error_line(self) -> str:
        """What went wrong, as the command said it: its `unitune: error:` line, else its last line (a traceback's
        last line names the exception)."""
        lines = [line.strip() for line in self.tail(200).splitlines() if line.strip()]
        errors = [line for line in lines if ": error:" in line]
        return (errors or lines or [f"exit code {self.returncode}"])[-1]


class JobQueue:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="unitune-ui-jobs", daemon=True)
        self._worker.start()

    def submit(self, argv: list[str], title: str, output_dir: str | None = None) -> Job:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._changed:
            number = next(self._ids)
            job = Job(number, list(argv), title, self.folder / f"job-{os.getpid()}-{number}.log", output_dir)
            self.jobs.append(job)
            self._changed.notify_all()
        return job

    @property
    def running(self) -> Job | None:
        return next((job for job in self.jobs if job.state == "running"), None)

    def busy(self, output_dir: str) -> Job | None:
        """The queued or running job that writes this run folder."""
        where = Path(output_dir).resolve()
        return next((job for job in self.jobs if job.state in ("queued", "running") and job.output_dir
                     and Path(job.output_dir).resolve() == where), None)

    def stop(self, job: Job) -> str:
        """Cancel a queued job, or SIGTERM a running one (a training run then saves a checkpoint)."""
        with self._changed:
            if job.state == "queued":
                job.state = "cancelled"
                return f"cancelled {job.title}"
            if job.state == "running" and job.process is not None:
                job.process.send_signal(signal.SIGTERM)
                return f"stopping {job.title}: it saves a checkpoint first (Resume continues it)"
            if job.state == "running":
                return f"{job.title} is starting; press Stop again in a moment"
        return f"{job.title} is not running"

    def shutdown(self, timeout: float = 600) -> None:
        """Cancel the queue and stop the running job cleanly: SIGTERM, then wait for its checkpoint. A job that is
        starting right now gets its SIGTERM from the worker (see _run). A second Ctrl-C while waiting sends a second
        SIGTERM, on which a training run exits at once."""
        with self._changed:
            self._closing = True
            for job in self.jobs:
                if job.state == "queued":
                    job.state = "cancelled"
            job = self.running
            if job is not None and job.process is not None:
                print(f"unitune ui: stopping {job.title} (it saves a checkpoint first)", file=sys.stderr, flush=True)
                job.process.send_signal(signal.SIGTERM)
            self._changed.notify_all()
        try:
            self._worker.join(timeout)
        except KeyboardInterrupt:
            if job is not None and job.process is not None:
                job.process.send_signal(signal.SIGTERM)
                self._worker.join(30)
        if self._worker.is_alive() and job is not None and job.process is not None:
            job.process.kill()

    def _next(self) -> Job | None:
        with self._changed:
            while not self._closing:
                job = next((j for j in self.jobs if j.state == "queued"), None)
                if job is not None:
                    job.state = "running"
                    return job
                self._changed.wait()
        return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            self._run(job)

    def _run(self, job: Job) -> None:
        env = job_env()
        with open(job.log, "w", encoding="utf-8") as log:
            log.write(f"$ unitune {' '.join(job.argv)}\n")
            log.flush()
            try:
                # its own session: a Ctrl-C in the UI's terminal reaches the UI, which stops the job with SIGTERM
                process = subprocess.Popen([sys.executable, "-m", "unitune", *job.argv], stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                           start_new_session=True)
                with self._changed:
                    job.process = process
                    if self._closing:  # shut down while it started: stop it as shutdown() stops a running job
                        process.send_signal(signal.SIGTERM)
                job.returncode = process.wait()
            except OSError as err:
                log.write(f"unitune ui: error: could not start the job: {err}\n")
                job.returncode = -1
        with self._changed:
            job.state = ("finished" if job.returncode == 0 else "stopped" if job.returncode in STOPPED else "failed")
            self._changed.notify_all()
