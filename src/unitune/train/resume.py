"""``--resume``: the newest complete checkpoint, continued only by the run it belongs to (the same settings)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError, warn
from .records import record_of


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
