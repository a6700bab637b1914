"""A run's life: its output folder, its status in unitune_run.json, a clean stop on SIGTERM/SIGINT, and a resume
that continues only the run it belongs to.

    running -> finished | interrupted (a checkpoint was saved; `--resume` continues it) | failed (the error line)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from ..errors import Interrupted, UserError, warn
from ..files import RUN_FILE, protected_folders, read_run, write_json_atomic

FINISHED = "finished"
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + the signal, as shells report them


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch (or a single process), before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


ASIDE = ".old-"  # <output_dir>.old-<timestamp>: a run --overwrite_output_dir moved aside
END_BARRIER_S = 300  # see end_process_group


def record_of(folder: Path) -> dict | None:
    """The run record, None when there is none; {} when it cannot be read or is not a JSON object."""
    try:
        record = read_run(folder)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) or record is None else {}


def run_status(folder: Path) -> str | None:
    """finished / running / interrupted / failed; None when the folder holds no run. A record without a status was
    written by unitune before statuses existed, at the end of a run: finished."""
    record = record_of(folder)
    if record:
        return record.get("status", FINISHED)
    if (folder / "adapter_config.json").exists():
        return FINISHED
    return "interrupted" if any(folder.glob("checkpoint-*")) else None


def status_line(folder: Path) -> str:
    """Why a run is not finished, for the evaluator's and report's skip lines."""
    record = record_of(folder) or {}
    status = run_status(folder)
    if status == "failed":
        return f"failed: {record.get('error', 'unknown error')}"
    step = record.get("global_step")
    if status == "running":
        return "not finished (still training, or killed before it could say so)"
    return f"{status}{f' at step {step}' if step is not None else ''}; continue it with `unitune train ... --resume`"


def run_to_keep(out: Path) -> str | None:
    """The status of the run in ``out`` that training there would continue or displace; None when there is none,
    or when it stopped before its first checkpoint (nothing there to continue or to lose)."""
    status = run_status(out) if out.is_dir() else None
    if status not in (None, FINISHED) and not any(out.glob("checkpoint-*")):
        return None
    return status


def prepare_output_dir(output_dir: str, overwrite: bool, resume: bool) -> Path:
    """The run folder, ready to train into. A run already there is continued (--resume), moved aside to
    <output_dir>.old-<timestamp> (--overwrite_output_dir; never deleted), or protected with a one-line error."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file; pass a folder path")
    if overwrite and resume:
        raise UserError("--overwrite_output_dir and --resume contradict each other; pass one of them")
    status = run_to_keep(out)
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


def checkpoint_complete(folder: Path) -> bool:
    """The Trainer writes trainer_state.json last: a checkpoint without a readable one died mid-save."""
    try:
        step = json.loads((folder / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return False
    return folder.name == f"checkpoint-{step}" and any(folder.glob("*.safetensors"))


def _step(folder: Path) -> int:
    tail = folder.name.split("-")[-1]
    return int(tail) if tail.isdigit() else -1


def resume_target(resume: bool, resume_from_checkpoint: str | None, out: Path) -> str | None:
    """The checkpoint to continue from: --resume_from_checkpoint, or the newest complete one with --resume."""
    if resume_from_checkpoint:
        folder = Path(resume_from_checkpoint)
        if not folder.is_dir() or not checkpoint_complete(folder):
            raise UserError(f"--resume_from_checkpoint {folder} is not a complete checkpoint folder; "
                            f"pick one of the checkpoint-* folders in {out}")
        return str(folder)
    if not resume:
        return None
    for folder in sorted(out.glob("checkpoint-*"), key=_step, reverse=True):
        if checkpoint_complete(folder):
            print(f"unitune: resuming from {folder}", flush=True)
            return str(folder)
        warn(f"skipping {folder}: incomplete (no readable trainer_state.json; the process likely died while "
             "saving it)")
    raise UserError(f"--resume: no complete checkpoint-* folder in {out}; drop --resume to start fresh")


def resume_signature(record: dict) -> dict:
    """What must not change between a checkpoint and the command that continues it, by the flag that sets it:
    settings as the user gave them (a resolved path differs across machines and installs)."""
    settings = record.get("settings") or {}
    return {"--method": record.get("method"), "--model_name": record.get("model_name"),
            "--dataset": settings.get("dataset"), "--split": record.get("train_split"),
            "--max_train_samples (rows)": record.get("train_rows"), "--seed": settings.get("seed"),
            "--lora_r": settings.get("lora_r"), "--lora_alpha": settings.get("lora_alpha"),
            "--max_length": settings.get("max_length"),
            "the effective batch (batch x accumulation x processes)": record.get("effective_batch")}


def check_resume_matches(checkpoint: str, record: dict) -> None:
    """Refuse to continue a checkpoint written by a run with other settings: its steps would mean something else."""
    before = record_of(Path(checkpoint).parent) or {}
    now = resume_signature(record)
    for flag, value in resume_signature(before).items():
        if value is not None and now[flag] != value:
            raise UserError(f"cannot resume {checkpoint}: it was trained with {flag} {value}, this command has "
                            f"{now[flag]}; use the original settings, or --overwrite_output_dir to start again")


class GracefulStop(TrainerCallback):
    """On SIGTERM or SIGINT: finish the optimizer step, save a checkpoint, stop. A second signal exits at once.

    Ranks agree every step (a max over the processes), so all of them stop and save at the same step even when
    only one got the signal.
    """

    DUPLICATE_WITHIN = 3.0  # seconds: SLURM signals every process of a step and torchrun forwards it again

    def __init__(self, resume_hint: str = "run the same command with --resume to continue"):
        self.signal: int | None = None
        self.received = 0.0
        self.stopped_at: int | None = None
        self.finished = False
        self.resume_hint = resume_hint
        self._previous: dict = {}

    def install(self) -> None:
        for sig in EXIT_CODES:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            if time.monotonic() - self.received < self.DUPLICATE_WITHIN:
                return  # the same stop, delivered twice (SLURM + torchrun)
            os._exit(EXIT_CODES[signal.Signals(signum)])
        self.signal, self.received = signum, time.monotonic()
        print(f"\nunitune: {signal.Signals(signum).name}: finishing this step and saving a checkpoint (send it again "
              "to stop at once)", file=sys.stderr, flush=True)

    def _agreed(self, args) -> int:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.signal or 0
        flag = torch.tensor([self.signal or 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        agreed = self._agreed(args)
        if agreed:
            self.signal = self.signal or agreed
            self.stopped_at = state.global_step
            self.finished = state.global_step >= state.max_steps  # the last step: the run is complete anyway
            control.should_save = control.should_save or not self.finished
            control.should_evaluate = False  # the grace period is for the checkpoint
            control.should_training_stop = True
        return control

    def outcome(self, out: Path) -> Interrupted | None:
        if self.stopped_at is None or self.finished:
            return None
        name = signal.Signals(self.signal).name
        return Interrupted(f"{name}: stopped at step {self.stopped_at} with a checkpoint in "
                           f"{out / f'checkpoint-{self.stopped_at}'}; {self.resume_hint}",
                           EXIT_CODES[signal.Signals(self.signal)])


def write_status(out: Path, record: dict, status: str, **extra) -> dict:
    """Rank 0 writes the run record with its status; returns the record written."""
    record = record | {"status": status} | extra
    if is_main_process():
        write_json_atomic(out / RUN_FILE, record)
    return record


def end_process_group() -> None:
    """Destroy torch.distributed's process group once training is over, as torch asks: left to interpreter exit,
    gloo's threads were seen to abort a rank now and then ("terminate called without an active exception").
    First a barrier (gloo's waits for every collective still queued on this rank, e.g. FSDP's last gathers) and a
    garbage collection (the trainer's reference cycles hold the sharded model and the work objects of its
    collectives), so nothing of the group is left for the interpreter's own teardown: CI once saw a rank abort that
    way after an FSDP run had been written, with the destroy alone. The barrier waits END_BARRIER_S at most: a rank
    that failed after training (writing its files) never arrives, and the others must not wait for the group's
    30-minute timeout."""
    import gc
    from datetime import timedelta

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier(async_op=True).wait(timeout=timedelta(seconds=END_BARRIER_S))
        except RuntimeError:  # timed out: a peer is gone; its launcher reports why
            pass
        gc.collect()
        dist.destroy_process_group()
