"""The training workflow: config -> data -> model -> method's TRL trainer -> train -> run folder."""

from __future__ import annotations

import math
import time
from pathlib import Path

from .config import TrainConfig
from .data import load_split, require_format, resolve_dataset, split_names, validate_rows
from .errors import UserError, warn
from .methods import METHODS, MethodSpec
from .models import Hardware, choose_hardware, load_model, load_tokenizer, resolve_model, world_size
from .runs import RUN_FILE, library_versions, machine, prepare_output_dir, write_json_atomic


def prepare_split(dataset: str, split: str, limit: int | None, limit_flag: str, spec: MethodSpec,
                  cfg: TrainConfig, tokenizer):
    """Load one split, keep the first ``limit`` rows, check it suits the method, convert it."""
    ds = load_split(dataset, split)
    if len(ds) == 0:
        raise UserError(f"split '{split}' of {dataset} has no rows; add data or choose another split")
    if limit is not None:
        if limit > len(ds):
            warn(f"--{limit_flag} {limit} is more than the {len(ds)} rows of split '{split}'; "
                          "using all of them")
        ds = ds.select(range(min(limit, len(ds))))
    fmt = require_format(ds, spec.name, spec.formats)
    validate_rows(ds, fmt)
    return spec.module.prepare(ds, fmt, cfg, tokenizer)


def planned_steps(cfg: TrainConfig, rows: int) -> int:
    """Optimizer steps the Trainer will take (its own formula: micro-batches per epoch, then accumulation)."""
    if cfg.max_steps:
        return cfg.max_steps
    micro = math.ceil(rows / (cfg.per_device_train_batch_size * world_size()))
    per_epoch = max(math.ceil(micro / cfg.gradient_accumulation_steps), 1)
    return math.ceil(cfg.num_train_epochs * per_epoch)


def truncation_note(ds, max_length: int) -> str | None:
    if "input_ids" not in ds.column_names:
        return None
    lengths = [len(ids) for ids in ds["input_ids"]]
    cut = [n - max_length for n in lengths if n > max_length]
    if not cut:
        return None
    return (f"{len(cut)} of {len(lengths)} rows exceed --max_length {max_length} and will be truncated "
            f"(by up to {max(cut)} tokens); raise --max_length to keep them whole")


def training_args(cfg: TrainConfig, hw: Hardware, out: Path, has_eval: bool) -> dict:
    """The TrainingArguments fields every method shares."""
    import torch

    return dict(
        output_dir=str(out), num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps, seed=cfg.seed,
        eval_strategy="steps" if has_eval else "no", eval_steps=cfg.eval_steps or cfg.save_steps,
        bf16=hw.dtype == torch.bfloat16, fp16=hw.dtype == torch.float16,
        gradient_checkpointing=hw.gradient_checkpointing, use_cpu=hw.device == "cpu",
        include_num_input_tokens_seen="non_padding", report_to="none",
    )


def resume_target(cfg: TrainConfig, out: Path) -> str | bool | None:
    if cfg.resume_from_checkpoint:
        if not Path(cfg.resume_from_checkpoint).is_dir():
            raise UserError(f"--resume_from_checkpoint {cfg.resume_from_checkpoint} is not a folder; "
                            f"pick one of the checkpoint-* folders in {out}")
        return cfg.resume_from_checkpoint
    if cfg.resume:
        if not any(out.glob("checkpoint-*")):
            raise UserError(f"--resume: no checkpoint-* folder in {out}; drop --resume to start fresh")
        return True
    return None


def print_plan(cfg: TrainConfig, train_ds, split: str, out: Path) -> None:
    steps = planned_steps(cfg, len(train_ds))
    print(f"unitune: plan: {cfg.method} on {len(train_ds)} rows of '{split}', {steps} optimizer steps "
          f"(batch {cfg.per_device_train_batch_size} x accumulation {cfg.gradient_accumulation_steps}), "
          f"lr {cfg.learning_rate:g}, output {out}")
    if "input_ids" in train_ds.column_names:
        tokens = sum(min(len(ids), cfg.max_length) for ids in train_ds["input_ids"])
        print(f"unitune: plan: {tokens} tokens per epoch")


def tokens_seen(state) -> int | None:
    """Non-pad tokens trained on: the Trainer's count, else the method's own "num_tokens" log (GRPO)."""
    if state.num_input_tokens_seen:
        return int(state.num_input_tokens_seen)
    logged = [float(e["num_tokens"]) for e in state.log_history if "num_tokens" in e]
    return int(max(logged)) if logged else None


def run_training(cfg: TrainConfig) -> Path:
    spec = METHODS[cfg.method]
    hw = choose_hardware(cfg.use_qlora)
    print(hw.line(), flush=True)
    dataset = resolve_dataset(cfg.dataset)
    split = cfg.split or (spec.split if spec.split in split_names(dataset) else "train")
    out = Path(cfg.output_dir) if cfg.dry_run else prepare_output_dir(cfg.output_dir, cfg.overwrite_output_dir,
                                                                       cfg.resume or bool(cfg.resume_from_checkpoint))
    source = resolve_model(cfg.model_name)
    tokenizer = load_tokenizer(source)
    train_ds = prepare_split(dataset, split, cfg.max_train_samples, "max_train_samples", spec, cfg, tokenizer)
    eval_ds = (prepare_split(dataset, cfg.eval_split, cfg.max_eval_samples, "max_eval_samples", spec, cfg,
                             tokenizer)
               if cfg.eval_split else None)
    note = truncation_note(train_ds, cfg.max_length)
    print_plan(cfg, train_ds, split, out)
    if note:
        warn(note)
    if cfg.dry_run:
        print("unitune: dry run: nothing trained")
        return out

    model = load_model(source, hw)
    trainer = spec.module.build(cfg, model, tokenizer, train_ds, eval_ds,
                                training_args(cfg, hw, out, eval_ds is not None))
    started = time.time()
    trainer.train(resume_from_checkpoint=resume_target(cfg, out))
    wall = time.time() - started
    if eval_ds is not None:
        trainer.evaluate()  # the final eval loss lands in trainer_state.json
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        trainer.state.save_to_json(str(out / "trainer_state.json"))
        write_json_atomic(out / RUN_FILE, {
            "method": cfg.method, "base_model": source, "model_name": cfg.model_name,
            "dataset": dataset, "train_split": split, "eval_split": cfg.eval_split,
            "train_rows": len(train_ds), "settings": vars(cfg), "hardware": {
                "device": hw.device, "dtype": str(hw.dtype), "qlora": hw.qlora, "reason": hw.reason,
                "world_size": trainer.args.world_size},
            "machine": machine(), "versions": library_versions(),
            "wall_time_seconds": round(wall, 2), "global_step": trainer.state.global_step,
            "train_tokens_seen": tokens_seen(trainer.state),
        })
        print(f"unitune: run written to {out} ({trainer.state.global_step} steps, {wall:.0f}s)")
    return out
