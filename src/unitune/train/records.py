"""unitune_run.json and the other files a run folder holds: what training writes there, and what the evaluator, the
web UI, merge and export read back (a run's status, its base model).

    running -> finished | interrupted (a checkpoint was saved; `--resume` continues it) | failed (the error line)

Rank 0 writes the record. Another rank that fails writes its error line to a file of its own, failed-rank-<k>.json,
and reading the record (``record_of``) folds those in: a run whose rank 1 failed reads as failed, with rank 1's error,
even when rank 0 was killed before it could say so.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from ..config import TrainConfig
from ..files import write_json_atomic
from ..machine import is_main_process, library_versions, machine, rank, world_size
from ..models.hardware import Hardware
from ..models.load import generation_config
from ..templates import chat_format

RUN_FILE = "unitune_run.json"
MERGE_FILE = "unitune_merge.json"  # in a folder `unitune merge` wrote: the run and base it came from


def is_run_folder(folder: Path) -> bool:
    """A folder training wrote: a run record or an adapter."""
    return (folder / RUN_FILE).exists() or (folder / "adapter_config.json").exists()


def is_earlier_run(folder: Path) -> bool:
    """A folder training may write into again (continue it, or move it aside): a run record, an adapter, or what a
    run left before its record was readable (checkpoints, another rank's failure)."""
    folder = Path(folder)
    return is_run_folder(folder) or any(folder.glob("checkpoint-*")) or any(folder.glob(RANK_FAILURE.format("*")))


def adapter_base(folder: Path) -> str | None:
    """The base model PEFT recorded in a run's adapter_config.json, if readable."""
    try:
        return json.loads((Path(folder) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def recorded_base(run: Path) -> str | None:
    """The base model a run was trained from: unitune_run.json, else adapter_config.json. A recorded cache folder
    that is gone (a new $UNITUNE_HOME, a cleaned cache, the embedded model's cache key changed) is made again from
    what the run was given: the embedded model or the .gguf file."""
    try:
        record = read_run(run) or {}
    except (OSError, ValueError):
        record = {}
    base = record.get("base_model") or adapter_base(run)
    given = (record.get("settings") or {}).get("model_name")
    if base and not Path(base).exists() and Path(base).is_absolute() and (given is None or
                                                                           str(given).endswith(".gguf")):
        from ..models.load import resolve_model

        return resolve_model(given)
    return base


def read_run(folder: Path) -> dict | None:
    path = Path(folder) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None


FINISHED = "finished"


ASIDE = ".old-"  # <output_dir>.old-<timestamp>: a run --overwrite_output_dir moved aside


RANK_FAILURE = "failed-rank-{}.json"  # the error of rank k > 0: one file per rank, so no two ranks write one file


def rank_failures(folder: Path) -> list[dict]:
    """The failures ranks other than 0 recorded in ``folder``, earliest first: {"rank", "error", "time", "host"}."""
    found = []
    for path in Path(folder).glob(RANK_FAILURE.format("*")):
        try:
            failure = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(failure, dict) and "error" in failure:
            found.append(failure)
    return sorted(found, key=lambda f: (f.get("time") or 0, str(f.get("rank"))))


def record_of(folder: Path) -> dict | None:
    """The run record, None when there is none; {} when it cannot be read or is not a JSON object. A run that is not
    finished and has failures of other ranks reads as failed, their errors (earliest first) before rank 0's own."""
    try:
        record = read_run(folder)
    except (OSError, ValueError):
        record = {}
    record = record if isinstance(record, dict) or record is None else {}
    failures = rank_failures(folder) if (record.get("status", FINISHED) if record else None) != FINISHED else []
    if not failures:
        return record
    errors = [f"rank {f.get('rank')}: {f['error']}" for f in failures]
    if record and record.get("status") == "failed" and record.get("error"):
        errors.append(f"rank 0: {record['error']}")
    return (record or {}) | {"status": "failed", "error": "; ".join(errors), "failed_ranks": failures}


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


def write_status(out: Path, record: dict, status: str, **extra) -> dict:
    """Rank 0 writes the run record with its status; another rank writes only a failure (``error``), to its own
    RANK_FAILURE file. Returns the record."""
    record = record | {"status": status} | extra
    if is_main_process():
        write_json_atomic(out / RUN_FILE, record)
    elif status == "failed":
        write_json_atomic(out / RANK_FAILURE.format(rank()), {"rank": rank(), "error": extra.get("error"),
                                                              "time": time.time(), "host": platform.node()})
    return record


def clear_stale_failures(out: Path) -> None:
    """Before a run starts again in ``out``, this rank's failure from an earlier attempt goes, and on rank 0 those of
    ranks this launch does not have. A rank clears no other's: a peer may already have failed in this attempt."""
    me, size = rank(), world_size()
    for path in Path(out).glob(RANK_FAILURE.format("*")):
        number = path.name.removeprefix("failed-rank-").removesuffix(".json")
        if number.isdigit() and (int(number) == me or (me == 0 and int(number) >= size)):
            path.unlink(missing_ok=True)


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


def save_generation_config(source: str, tokenizer, out: Path, revision: str | None = None) -> None:
    """generation_config.json in the run folder, with EOS ids that include the template's end-of-turn token, so
    base + adapter and merged models stop after a reply (many model repos list only the tokenizer's EOS)."""
    config = generation_config(source, revision)
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
