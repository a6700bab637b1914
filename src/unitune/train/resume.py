"""``--resume``: the newest complete checkpoint (``auto``: or a fresh start when there is none), continued only by the
run it belongs to (the same settings)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError, warn
from .records import FINISHED, record_of, run_status


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


def resume_target(resume: str, resume_from_checkpoint: str | None, out: Path) -> str | None:
    """The checkpoint to continue from: --resume_from_checkpoint, or the newest complete one with --resume true or
    auto. None: start fresh (--resume false, or auto with no complete checkpoint)."""
    if resume_from_checkpoint:
        folder = Path(resume_from_checkpoint)
        if not folder.is_dir() or not checkpoint_complete(folder):
            raise UserError(f"--resume_from_checkpoint {folder} is not a complete checkpoint folder; "
                            f"pick one of the checkpoint-* folders in {out}")
        return str(folder)
    if resume == "false":
        return None
    for folder in sorted(out.glob("checkpoint-*"), key=_step, reverse=True):
        if checkpoint_complete(folder):
            print(f"unitune: resuming from {folder}", flush=True)
            return str(folder)
        warn(f"skipping {folder}: incomplete (no readable trainer_state.json; the process likely died while "
             "saving it)")
    if resume != "auto":
        raise UserError(f"--resume: no complete checkpoint-* folder in {out}; drop --resume to start fresh, or "
                        "pass --resume auto to start fresh when there is none")
    print(f"unitune: --resume auto: no checkpoint in {out} yet; starting fresh", flush=True)
    return None


def finished_already(resume: str, out: Path, record: dict) -> bool:
    """--resume auto where this run has finished: nothing to train, so a requeue of a finished job changes nothing
    (resuming from its last checkpoint would train a step past the end: the Trainer checks --max_steps only after a
    step). A finished run of other settings is refused, as resuming it would be; --resume true trains a finished run
    further (a larger --max_steps)."""
    if resume != "auto" or run_status(out) != FINISHED:
        return False
    _check_same_run(f"continue the finished run in {out}", out, record)
    print(f"unitune: --resume auto: the run in {out} has finished; nothing to train", flush=True)
    return True


def _one_or_many(dataset):
    """A record's --dataset: one source as its name (records written before mixing hold a string), several as a
    list."""
    return dataset[0] if isinstance(dataset, list) and len(dataset) == 1 else dataset


def resume_signature(record: dict) -> dict:
    """What must not change between a checkpoint and the command that continues it, by the flag that sets it:
    settings as the user gave them (a resolved path differs across machines and installs)."""
    settings = record.get("settings") or {}
    return {"--method": record.get("method"), "--model_name": record.get("model_name"),
            "--dataset": _one_or_many(settings.get("dataset")), "--split": record.get("train_split"),
            "--max_train_samples (rows)": record.get("train_rows"), "--seed": settings.get("seed"),
            "--lora_r": settings.get("lora_r"), "--lora_alpha": settings.get("lora_alpha"),
            "--max_length": settings.get("max_length"),
            "the effective batch (batch x accumulation x processes)": record.get("effective_batch")}


def check_resume_matches(checkpoint: str, record: dict) -> None:
    """Refuse to continue a checkpoint written by a run with other settings: its steps would mean something else."""
    _check_same_run(f"resume {checkpoint}", Path(checkpoint).parent, record)


def _check_same_run(what: str, folder: Path, record: dict) -> None:
    before = record_of(folder) or {}
    now = resume_signature(record)
    for flag, value in resume_signature(before).items():
        if value is not None and now[flag] != value:
            raise UserError(f"cannot {what}: it was trained with {flag} {value}, this command has "
                            f"{now[flag]}; use the original settings, or --overwrite_output_dir to start again")
