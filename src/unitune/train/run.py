"""The training workflow: config -> data -> model -> method's TRL trainer -> train -> run folder."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

from ..config import TrainConfig
from ..config.trackers import trackers
from ..console import dataset_bars, use_training_bar
from ..data import cache as data_cache
from ..data.formats import needs_chat_template
from ..data.lengths import without_counts
from ..data.load import resolve_dataset, split_names
from ..data.mix import STOPPING, mix
from ..data.stream import stream
from ..data.pipeline import DataSettings, convert, prepare
from ..errors import Interrupted, UserError, first_line, recorded_warnings, warn
from ..fast.dropout import fast_lora_dropout
from ..fast.lm_head import compact_lm_head
from ..machine import bare_srun, is_main_process, unitune_home, world_size
from ..methods import METHODS, MethodSpec
from ..models.hardware import Hardware, choose_hardware
from ..models.load import load_model, load_tokenizer, resolve_model
from ..models.revision import newest_revision, pinned
from ..models.precision import fp32_adapters
from ..templates import chat_format, require_chat_template, use_template_file
from .generation_eval import generation_eval
from .lifecycle import GracefulStop, end_process_group
from .live_log import LiveLog
from .lock import RunLock, held_while_training
from ..tools import run_tools
from .methods import trainer_module
from .output_dir import prepare_output_dir
from .plan import fit_memory, length_plan, plural, print_mix, print_plan
from .records import FINISHED, record_of, run_record, save_generation_config, tokens_seen, write_status
from .resume import check_resume_matches, finished_already, resume_target


def data_settings(cfg: TrainConfig, limit: int | None, limit_flag: str) -> DataSettings:
    """What of the train config changes the rows of one split (the train or the eval split)."""
    return DataSettings(cfg.column_map, limit, limit_flag, cfg.max_bad_rows, cfg.train_on_prompt, cfg.num_proc)


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
        trainer = trainer_module(spec.name).build(cfg, model, tokenizer, train_ds, eval_ds,
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


def train_split(cfg: TrainConfig, spec: MethodSpec, dataset: str) -> str:
    """--split, else the method's natural split where the dataset has it, else train."""
    return cfg.split or (spec.split if spec.split in split_names(dataset) else "train")


def training_rows(cfg: TrainConfig, spec: MethodSpec, sources: list[str], tokenizer):
    """(the train split converted for the method's trainer, its usable rows, its length plan, the cache entry that
    holds them or None, the mixed sources or None): loaded from the prepared-data cache (data.cache) when an entry
    fits, else prepared now. Several sources are mixed (data.mix) before the conversion."""
    settings = data_settings(cfg, cfg.max_train_samples, "max_train_samples")
    splits = [train_split(cfg, spec, dataset) for dataset in sources]
    mixing = {"weights": cfg.dataset_weights, "seed": cfg.seed, "stopping": STOPPING} if len(sources) > 1 else None
    name = None if cfg.no_data_cache else data_cache.key(list(zip(sources, splits)), spec, settings, tokenizer,
                                                         cfg.max_length, mixing)
    entry = data_cache.load(name)
    if entry is None:
        with recorded_warnings() as warnings:
            if mixing:
                each = replace(settings, limit=None)  # --max_train_samples: the first N rows of the mix
                prepared, mixed = mix([prepare(d, s, spec, each) for d, s in zip(sources, splits)], spec.rows,
                                      cfg.dataset_weights, cfg.seed, settings.limit)
            else:
                prepared, mixed = prepare(sources[0], splits[0], spec, settings), []
            raw, fmt = prepared.rows, prepared.format
            chat = needs_chat_template(raw, fmt) or spec.samples  # sampled prompts are rendered as chat
            if chat:
                require_chat_template(tokenizer, cfg.model_name or "the embedded model")
            converted = convert(prepared, spec, settings, tokenizer)
            lengths = length_plan(raw, fmt, tokenizer, cfg.max_length, converted)
            converted = without_counts(converted)
        meta = {"read": prepared.read, "rows": len(raw), "format": fmt, "source_format": prepared.source_format,
                "bad": prepared.bad, "needs_chat_template": chat, "lengths": lengths, "warnings": warnings,
                "sources": [asdict(source) for source in mixed] or None}
        entry = data_cache.save(name, converted, meta) or data_cache.Entry(None, converted, meta)
    elif entry.meta["needs_chat_template"]:
        require_chat_template(tokenizer, cfg.model_name or "the embedded model")
    mixed = entry.meta.get("sources")  # each mixed source's rows and share (None: one source)
    if mixed:
        print_mix(mixed, entry.meta["rows"])
    return entry.converted, entry.meta["rows"], entry.meta["lengths"], entry.path and str(entry.path), mixed


def streamed_rows(cfg: TrainConfig, spec: MethodSpec, dataset: str, split: str, tokenizer):
    """training_rows for --streaming: (the stream of converted rows, no row count, the length plan of its first
    chunk with ``rows`` added, no cache entry, no sources, the counts the stream keeps as it is read)."""
    streamed = stream(dataset, split, spec, data_settings(cfg, cfg.max_train_samples, "max_train_samples"), tokenizer,
                      cfg.seed)
    first = streamed.first
    lengths = length_plan(first.rows, first.format, tokenizer, cfg.max_length, first.converted) | {
        "rows": len(first.rows)}
    return streamed.rows, None, lengths, None, None, streamed.counts


def training_revision(source: str, out: Path, resuming: bool) -> str | None:
    """The commit of a Hub model to train on: a resumed run's own (models.revision), else the newest."""
    earlier = (record_of(out) or {}).get("base_revision") if resuming else None
    return pinned(source, earlier, f"the run in {out}") if earlier else newest_revision(source)


def run_training(cfg: TrainConfig) -> Path:
    if bare_srun():
        raise UserError(f"srun started {bare_srun()} copies of unitune with nothing to join them (accelerate builds no "
                        "process group from SLURM's variables): each would train alone into one folder; run "
                        "`srun torchrun --nproc_per_node N -m unitune train ...` (see docs/scaling.md)")
    with held_while_training() as lock:  # taken by prepare_output_dir; released however this ends
        return train_locked(cfg, lock)


def train_locked(cfg: TrainConfig, lock: RunLock) -> Path:
    spec = METHODS[cfg.method]
    trackers(cfg.report_to)  # a missing tracker package or login fails now, not after loading data and model
    hw = choose_hardware(cfg.use_qlora, cfg.dtype)
    print(hw.line(), flush=True)
    sources = [resolve_dataset(name) for name in cfg.dataset or [None]]
    dataset = sources[0]  # with several sources: the eval split, generation eval and the record's dataset
    with ranks_in_turn(" + ".join(sources)):  # see ranks_in_turn
        split = train_split(cfg, spec, dataset) if len(sources) == 1 else "mixed"
        resuming = cfg.resume != "false" or bool(cfg.resume_from_checkpoint)
        out = Path(cfg.output_dir) if cfg.dry_run else prepare_output_dir(cfg.output_dir, cfg.overwrite_output_dir,
                                                                           resuming, lock)
        source = resolve_model(cfg.model_name)
        revision = training_revision(source, out, resuming)
        tokenizer = load_tokenizer(source, revision)
        use_template_file(tokenizer, cfg.chat_template)
        run_tools(cfg, tokenizer, cfg.model_name or "the embedded model")  # a bad tool or template: before the data
        if cfg.streaming:
            train_ds, rows, lengths, cached, mixed, streamed = streamed_rows(cfg, spec, dataset, split, tokenizer)
        else:
            train_ds, rows, lengths, cached, mixed = training_rows(cfg, spec, sources, tokenizer)
            streamed = None
        given, chosen = cfg, hw
        cfg, hw = fit_memory(cfg, hw, lengths, source)
        if hw is not chosen:
            print(hw.line(), flush=True)
        print_plan(cfg, given, rows, rows and len(train_ds), split, out, lengths)
        eval_ds = None
        if cfg.eval_split:
            settings = data_settings(cfg, cfg.max_eval_samples, "max_eval_samples")
            eval_ds = without_counts(prepare(dataset, cfg.eval_split, spec, settings, tokenizer).converted)
        callbacks = [generation_eval(cfg, dataset, tokenizer, cfg.per_device_train_batch_size)] if cfg.eval_generation \
            else []
    if cfg.dry_run:
        print("unitune: dry run: nothing trained")
        return out

    record = run_record(cfg, given, hw, source, dataset, split, rows and len(train_ds), tokenizer) | {
        "base_revision": revision, "data_cache": cached, "sources": mixed, "streamed": streamed}
    if finished_already(cfg.resume, out, record):  # --resume auto: a requeued job that had finished
        return out
    resume = resume_target(cfg.resume, cfg.resume_from_checkpoint, out)  # before the model: a bad --resume fails fast
    if resume:
        check_resume_matches(resume, record)
    record = write_status(out, record, "running")
    stop = GracefulStop("run the same command to continue" if cfg.resume == "auto" else
                        "run the same command with --resume" + (" instead of --overwrite_output_dir"
                                                                if cfg.overwrite_output_dir else "") + " to continue")
    try:
        train_and_save(spec, cfg, hw, source, tokenizer, train_ds, eval_ds, out, resume, record, stop, callbacks)
        if streamed and is_main_process():  # the stream's counts, as the record keeps them
            print(f"unitune: data: read {streamed['read']:,} rows of the stream ({streamed['unusable']:,} unusable, "
                  "skipped)", flush=True)
    except Interrupted:
        end_process_group()
        raise
    except BaseException as err:  # the process group is left alone: peers may be stuck in a collective
        write_status(out, record, "failed", error=first_line(err))  # on rank k > 0: its own failure file
        raise
    finally:
        stop.restore()
    end_process_group()
    return out


def train_and_save(spec: MethodSpec, cfg: TrainConfig, hw: Hardware, source: str, tokenizer, train_ds, eval_ds,
                   out: Path, resume: str | None, record: dict, stop: GracefulStop, callbacks: list) -> None:
    """Load the model, train (stopping cleanly on a signal), save the adapter and the finished run record."""
    model = load_model(source, hw, revision=record["base_revision"], scores=spec.scores)
    if tokenizer.chat_template and not spec.scores:  # GRPO's sampling stops at the end of a turn, as the saved config
        model.generation_config.eos_token_id = chat_format(tokenizer).stop_ids(model.generation_config)
    with dataset_bars(len(train_ds) if hasattr(train_ds, "__len__") else 0):  # the trainer's own preparation runs here
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
        save_generation_config(source, tokenizer, out, record["base_revision"])
        write_status(out, record, FINISHED, wall_time_seconds=round(wall, 2), global_step=trainer.state.global_step,
                     train_tokens_seen=tokens_seen(trainer.state))
        print(f"unitune: run written to {out} ({plural(trainer.state.global_step, 'step')}, {wall:.0f}s)")
