"""The training workflow: config -> data -> model -> method's TRL trainer -> train -> run folder."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
import traceback
from dataclasses import replace
from pathlib import Path

from ..config.train import TrainConfig
from ..data.lengths import Lengths, measure
from ..data.load import (FORMATS, check_labels, needs_chat_template, require_chat_template, require_format,
                   resolve_dataset, split_names)
from ..data.canonical import canonical, drop_bad_rows, load_rows
from ..templates import chat_format, use_template_file
from ..env import physical_memory
from ..errors import UserError, first_line, warn
from ..methods import METHODS, MethodSpec
from ..models.load import (Hardware, choose_hardware, generation_config, load_model, load_tokenizer, resolve_model,
                     unitune_home, world_size)
from .live_log import LiveLog
from .lifecycle import (FINISHED, GracefulStop, Interrupted, check_resume_matches, end_process_group,
                        is_main_process, prepare_output_dir, resume_target, write_status)
from ..console import dataset_bars, use_training_bar
from ..files import library_versions, machine
from ..fast.speed import compact_lm_head, fast_lora_dropout, fp32_adapters
from ..config.trackers import trackers
from .generation_eval import generation_eval


def load_checked(dataset: str, split: str, limit: int | None, limit_flag: str, spec: MethodSpec, cfg: TrainConfig):
    """Load one split (columns mapped), keep the first ``limit`` rows, check it suits the method, convert a source
    format into its canonical one and drop the rows that cannot be used: (rows, canonical format)."""
    ds = load_rows(dataset, split, cfg.column_map)
    if len(ds) == 0:
        raise UserError(f"split '{split}' of {dataset} has no rows; add data or choose another split")
    if limit is not None:
        if limit > len(ds):
            warn(f"--{limit_flag} {limit} is more than the {len(ds)} rows of split '{split}'; "
                          "using all of them")
        ds = ds.select(range(min(limit, len(ds))))
    source = require_format(ds, spec.name, spec.formats)
    ds, fmt = canonical(ds, source)
    if fmt != source:
        print(f"unitune: data: split '{split}' holds {FORMATS[source][1]}, used as {FORMATS[fmt][1]}", flush=True)
    check_labels(ds, fmt)
    return drop_bad_rows(ds, fmt, cfg.max_bad_rows, f"split '{split}'"), fmt


def prepare_split(dataset: str, split: str, limit: int | None, limit_flag: str, spec: MethodSpec,
                  cfg: TrainConfig, tokenizer):
    """load_checked, then the method's conversion into what its TRL trainer takes."""
    ds, fmt = load_checked(dataset, split, limit, limit_flag, spec, cfg)
    with dataset_bars(len(ds)):
        return spec.module.prepare(ds, fmt, cfg, tokenizer)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def steps_per_epoch(cfg: TrainConfig, examples: int) -> int:
    """Optimizer steps per epoch over ``examples`` (what the trainer iterates), by the trainers' own formulas.

    Most methods: micro-batches per process, then accumulation, rounded up. GRPO: its batch counts completions,
    so a step takes batch x accumulation x processes / num_generations prompts, and TRL's sampler drops a last
    partial group of prompts.
    """
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size()
    if METHODS[cfg.method].samples_completions:
        from .methods.grpo import num_generations

        prompts = batch // num_generations(cfg, world_size())
        if examples < prompts:
            raise UserError(f"GRPO takes {prompts} prompts per optimizer step (batch x accumulation x processes / "
                            f"num_generations) but the data have {examples}; use more rows or a smaller batch")
        return examples // prompts
    micro = math.ceil(examples / (cfg.per_device_train_batch_size * world_size()))
    return max(math.ceil(micro / cfg.gradient_accumulation_steps), 1)


def planned_steps(cfg: TrainConfig, examples: int) -> int:
    """Optimizer steps the trainer will take: --max_steps, else the epochs times steps_per_epoch."""
    per_epoch = steps_per_epoch(cfg, examples)  # also checks GRPO has a full group of prompts
    return cfg.max_steps or math.ceil(cfg.num_train_epochs * per_epoch)


def length_plan(ds, fmt: str, tokenizer, max_length: int) -> dict:
    """Tokens and truncation of the training rows, measured as `unitune check` measures them."""
    summary = measure(ds, fmt, Lengths(tokenizer), max_length)
    if fmt != "text" and summary["prompt_over_max_length"] == len(ds):
        shortest = summary["prompt_tokens"]["min"]
        raise UserError(f"every row's prompt alone is at least --max_length {max_length} tokens (shortest: "
                        f"{shortest}), so nothing would be trained; raise --max_length above {shortest}")
    return summary


def activation_bytes_per_token(source: str) -> int | None:
    """A generous estimate of the fp32 activations one token keeps for the backward pass (LoRA, no checkpointing).

    Measured on SmolLM2-135M (hidden 576, MLP 1536, 30 layers): 1.65 MB per token; this formula gives 2.0 MB.
    """
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(source).get_text_config()
        return 4 * cfg.num_hidden_layers * (16 * cfg.hidden_size + 5 * cfg.intermediate_size)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def merge_batches(cfg: TrainConfig, hw: Hardware, longest: int | None, bytes_per_token: int | None) -> TrainConfig:
    """Fold gradient accumulation into larger micro-batches while the longest row (tokens) fits --max_batch_tokens.

    The effective batch (micro-batch x accumulation) and so the optimizer steps stay the same; TRL normalises the
    loss over the whole effective batch, so the update is the same too. A fold must also keep the estimated
    activations under a quarter of this machine's memory. GRPO is left alone: its batch counts completions.
    """
    budget = cfg.max_batch_tokens or 0  # off by default: measured within noise on our CPUs (bench/RESULTS.md)
    if not budget or not longest or not bytes_per_token or METHODS[cfg.method].samples_completions:
        return cfg
    micro, accum = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    fold = max((k for k in range(1, accum + 1) if accum % k == 0
                and micro * k * longest <= budget and micro * k * longest * bytes_per_token <= physical_memory() / 4),
               default=1)
    if fold == 1:
        return cfg
    return replace(cfg, per_device_train_batch_size=micro * fold, gradient_accumulation_steps=accum // fold)


def fit_memory(cfg: TrainConfig, hw: Hardware, lengths: dict, source: str) -> tuple[TrainConfig, Hardware]:
    """The batch plan and checkpointing that fit this machine (printed with the plan).

    With --max_batch_tokens: merge accumulation into larger micro-batches (merge_batches). CUDA: gradient
    checkpointing only when the estimated activations of one micro-batch exceed a quarter of the GPU's memory; below
    that it only costs time (measured in bench/RESULTS.md, GPU mode).
    """
    per_token = activation_bytes_per_token(source)
    longest = (lengths.get("row_tokens") or {}).get("max")
    cfg = merge_batches(cfg, hw, longest, per_token)
    if hw.device == "cuda" and hw.gradient_checkpointing and per_token and longest:
        import torch

        need = cfg.per_device_train_batch_size * longest * per_token * hw.dtype.itemsize / 4
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        if need <= total / 4:
            hw = replace(hw, gradient_checkpointing=False,
                         reason=f"{hw.reason}; no gradient checkpointing: activations ~{need / 2**30:.1f} GiB fit "
                                f"in a quarter of the GPU's {total / 2**30:.0f} GiB")
    return cfg, hw


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
        include_num_input_tokens_seen="non_padding", report_to=trackers(cfg.report_to) or "none",
        run_name=cfg.run_name or out.name,
    )


def raised_by_a_config(err: BaseException) -> bool:
    """Whether a TRL/transformers config class (its __post_init__ checks) raised ``err``."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).name.endswith(("_config.py", "training_args.py"))


def build_trainer(spec: MethodSpec, cfg: TrainConfig, hw: Hardware, model, tokenizer, train_ds, eval_ds, out: Path):
    """The method's TRL trainer; TRL's rejections of a flag combination become one line."""
    import torch

    try:
        trainer = spec.module.build(cfg, model, tokenizer, train_ds, eval_ds,
                                    training_args(cfg, hw, out, eval_ds is not None))
    except ValueError as err:
        if not raised_by_a_config(err):  # data or model errors inside the trainer keep their own message
            raise
        first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        raise UserError(f"TRL rejected these {cfg.method} settings: {first}; change the flags it names") from None
    if hw.device == "cpu":
        fast_lora_dropout(trainer.model, cfg.lora_dropout)
        if hw.dtype == torch.bfloat16 and not hw.qlora:  # TRL keeps a 4-bit base's adapter in bf16
            fp32_adapters(trainer.model)
    return trainer


def print_plan(cfg: TrainConfig, given: TrainConfig, rows: int, examples: int, split: str, out: Path,
               lengths: dict) -> None:
    """The plan: rows, optimizer steps over the ``examples`` the trainer iterates, batch, lr, output; lengths."""
    steps = planned_steps(cfg, examples)
    merged = (f", merged from {given.per_device_train_batch_size} x {given.gradient_accumulation_steps} to fit "
              f"--max_batch_tokens" if cfg is not given else "")
    unit = " completions" if METHODS[cfg.method].samples_completions else ""
    seen = f" ({examples} examples)" if examples != rows else ""
    print(f"unitune: plan: {cfg.method} on {plural(rows, 'row')} of '{split}'{seen}, "
          f"{plural(steps, 'optimizer step')} (batch {cfg.per_device_train_batch_size}{unit} x accumulation "
          f"{cfg.gradient_accumulation_steps} x {plural(world_size(), 'process')}{merged}), lr {cfg.learning_rate:g}, "
          f"output {out}")
    print(f"unitune: plan: {lengths['tokens']} tokens per epoch (prompt + reply, at most --max_length each)")
    cut = lengths["truncated"]
    if cut["rows"]:
        warn(f"{cut['rows']} rows exceed --max_length {cfg.max_length} and will be truncated (by up to "
             f"{cut['max_cut']} tokens); raise --max_length to keep them whole")


def tokens_seen(state) -> int | None:
    """Non-pad tokens trained on: the Trainer's count, else the method's own "num_tokens" log (GRPO)."""
    if state.num_input_tokens_seen:
        return int(state.num_input_tokens_seen)
    logged = [float(e["num_tokens"]) for e in state.log_history if "num_tokens" in e]
    return int(max(logged)) if logged else None


def template_record(tokenizer) -> dict | None:
    """How the run's chat template was masked, for unitune_run.json."""
    if not tokenizer.chat_template:
        return None
    chat = chat_format(tokenizer)
    return {"masking": chat.how, "end_of_turn": chat.end_of_turn, "system_folded": chat.folds_system}


def save_generation_config(source: str, tokenizer, out: Path) -> None:
    """generation_config.json in the run folder, with EOS ids that include the template's end-of-turn token, so
    base + adapter and merged models stop after a reply (many model repos list only the tokenizer's EOS)."""
    config = generation_config(source)
    if tokenizer.chat_template:
        config.eos_token_id = chat_format(tokenizer).stop_ids(config)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    config.save_pretrained(out)


def run_record(cfg: TrainConfig, given: TrainConfig, hw: Hardware, source: str, dataset: str, split: str,
               train_rows: int, tokenizer) -> dict:
    """What unitune_run.json records of a run, known before training starts."""
    return {
        "method": cfg.method, "base_model": source, "model_name": cfg.model_name,
        "dataset": dataset, "train_split": split, "eval_split": cfg.eval_split, "train_rows": train_rows,
        "effective_batch": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size(),
        "settings": vars(cfg), "hardware": {
            "device": hw.device, "dtype": str(hw.dtype), "qlora": hw.qlora, "reason": hw.reason,
            "world_size": world_size()},
        "batch_merged_from": None if cfg is given else [given.per_device_train_batch_size,
                                                        given.gradient_accumulation_steps],
        "machine": machine(), "versions": library_versions(), "chat_template": template_record(tokenizer),
    }


@contextlib.contextmanager
def ranks_in_turn(dataset: str):
    """Under torchrun, the ranks load and prepare the data one after another. Each re-reads local data with
    force_redownload, which rebuilds the shared datasets cache folder; a rank mapping in that folder while another
    rebuilt it lost its temp file (FileNotFoundError, seen once in the 2-process test). The data takes seconds."""
    if world_size() == 1:
        yield
        return
    from filelock import FileLock

    lock = unitune_home() / "locks" / f"data-{hashlib.sha1(dataset.encode()).hexdigest()[:16]}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        yield


def run_training(cfg: TrainConfig) -> Path:
    spec = METHODS[cfg.method]
    trackers(cfg.report_to)  # a missing tracker package or login fails now, not after loading data and model
    hw = choose_hardware(cfg.use_qlora, cfg.dtype)
    print(hw.line(), flush=True)
    dataset = resolve_dataset(cfg.dataset)
    with ranks_in_turn(dataset):  # see ranks_in_turn
        split = cfg.split or (spec.split if spec.split in split_names(dataset) else "train")
        resuming = cfg.resume or bool(cfg.resume_from_checkpoint)
        out = Path(cfg.output_dir) if cfg.dry_run else prepare_output_dir(cfg.output_dir, cfg.overwrite_output_dir,
                                                                           resuming)
        source = resolve_model(cfg.model_name)
        tokenizer = load_tokenizer(source)
        use_template_file(tokenizer, cfg.chat_template)
        raw, fmt = load_checked(dataset, split, cfg.max_train_samples, "max_train_samples", spec, cfg)
        if needs_chat_template(raw, fmt) or spec.name == "grpo":  # GRPO prompts are always rendered as chat
            require_chat_template(tokenizer, cfg.model_name or "the embedded model")
        lengths = length_plan(raw, fmt, tokenizer, cfg.max_length)
        given, chosen = cfg, hw
        cfg, hw = fit_memory(cfg, hw, lengths, source)
        if hw is not chosen:
            print(hw.line(), flush=True)
        with dataset_bars(len(raw)):
            train_ds = spec.module.prepare(raw, fmt, cfg, tokenizer)
        print_plan(cfg, given, len(raw), len(train_ds), split, out, lengths)
        eval_ds = (prepare_split(dataset, cfg.eval_split, cfg.max_eval_samples, "max_eval_samples", spec, cfg,
                                 tokenizer)
                   if cfg.eval_split else None)
        callbacks = [generation_eval(cfg, dataset, tokenizer, cfg.per_device_train_batch_size)] if cfg.eval_generation \
            else []
    if cfg.dry_run:
        print("unitune: dry run: nothing trained")
        return out

    record = run_record(cfg, given, hw, source, dataset, split, len(train_ds), tokenizer)
    resume = resume_target(cfg.resume, cfg.resume_from_checkpoint, out)  # before the model: a bad --resume fails fast
    if resume:
        check_resume_matches(resume, record)
    record = write_status(out, record, "running")
    stop = GracefulStop("run the same command with --resume" + (" instead of --overwrite_output_dir"
                                                               if cfg.overwrite_output_dir else "") + " to continue")
    try:
        train_and_save(spec, cfg, hw, source, tokenizer, train_ds, eval_ds, out, resume, record, stop, callbacks)
    except Interrupted:
        end_process_group()
        raise
    except BaseException as err:  # the process group is left alone: peers may be stuck in a collective
        write_status(out, record, "failed", error=first_line(err))
        raise
    finally:
        stop.restore()
    end_process_group()
    return out


def train_and_save(spec: MethodSpec, cfg: TrainConfig, hw: Hardware, source: str, tokenizer, train_ds, eval_ds,
                   out: Path, resume: str | None, record: dict, stop: GracefulStop, callbacks: list) -> None:
    """Load the model, train (stopping cleanly on a signal), save the adapter and the finished run record."""
    model = load_model(source, hw)
    if tokenizer.chat_template:  # GRPO's sampling stops at the end of a turn, as the saved config will
        model.generation_config.eos_token_id = chat_format(tokenizer).stop_ids(model.generation_config)
    with dataset_bars(len(train_ds)):  # the trainer's own preparation (tokenizing, truncating) runs in here
        trainer = build_trainer(spec, cfg, hw, model, tokenizer, train_ds, eval_ds, out)
    use_training_bar(trainer)
    for callback in callbacks:
        callback.attach(trainer)
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not trainer.is_fsdp_enabled \
            and is_main_process():
        warn("the accelerate config asks for FSDP, but accelerate runs CPU processes as plain DDP: each process "
             "holds the whole model (FSDP shards across GPUs)")
    trainer.add_callback(stop)
    trainer.add_callback(LiveLog(out))
    stop.install()
    started = time.time()
    with compact_lm_head(hw.device):  # only while our trainer runs
        trainer.train(resume_from_checkpoint=resume)
        wall = time.time() - started
        interrupted = stop.outcome(out)
        if interrupted:
            write_status(out, record, "interrupted", global_step=trainer.state.global_step,
                         wall_time_seconds=round(wall, 2))
            raise interrupted
        evaluated = any("eval_loss" in e and e.get("step") == trainer.state.global_step
                        for e in trainer.state.log_history)
        if eval_ds is not None and stop.signal is None and not evaluated:  # a stop during the last step skips it
            trainer.evaluate()  # the final eval loss lands in trainer_state.json
    if trainer.is_fsdp_enabled:  # the Trainer saves no adapter from a sharded state dict
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))
    if is_main_process():
        trainer.state.save_to_json(str(out / "trainer_state.json"))
        save_generation_config(source, tokenizer, out)
        write_status(out, record, FINISHED, wall_time_seconds=round(wall, 2), global_step=trainer.state.global_step,
                     train_tokens_seen=tokens_seen(trainer.state))
        print(f"unitune: run written to {out} ({plural(trainer.state.global_step, 'step')}, {wall:.0f}s)")
