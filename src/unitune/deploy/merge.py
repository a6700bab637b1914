"""`unitune merge`: base + LoRA adapter -> one full model folder (safetensors) with the tokenizer.

    unitune merge --run runs/sft_smollm2-135m-instruct --output merged/sft --dtype bfloat16

A QLoRA adapter learned to correct the 4-bit weights it was trained on, so by default it is merged into that
dequantised 4-bit base (``--merge_base quantized``), the model that was trained and evaluated (``train.trained``);
``original`` merges it into the full-precision weights instead.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import MERGE_DTYPES, MergeConfig
from ..errors import UserError
from ..files import protected_folders, publish_tree, replace_dir, temp_dir_beside, write_json_atomic
from ..models.load import load_tokenizer, resolve_model
from ..train.lock import check_free
from ..train.records import MERGE_FILE, is_run_folder, recorded_base
from ..train.trained import merged_model, qlora_dtype, scores

DTYPES = {name: getattr(torch, name) for name in MERGE_DTYPES}


def run_base(run: Path) -> str:
    """The base model a run was trained from (train.records.recorded_base); a one-line error when it records none."""
    base = recorded_base(run)
    if not base:
        raise UserError(f"{run} has no readable adapter_config.json; pass a finished run folder to --run")
    return base


def is_model_folder(folder: Path) -> bool:
    """What an earlier merge wrote: a model's config and weights, no sub-folders (runs, checkpoints, anything else)."""
    return ((folder / "config.json").exists() and any(folder.glob("*.safetensors"))
            and not any(p.is_dir() for p in folder.iterdir()))


def check_run(run: Path, doing: str = "merge") -> None:
    """A finished run that no process trains in (train.lock): its adapter is whole and stays so while it is read."""
    check_free(run, doing)
    if not (run / "adapter_config.json").exists():
        raise UserError(f"{run} holds no adapter (adapter_config.json); pass a finished run folder to --run")


def check_output(out: Path, run: Path, overwrite: bool, is_earlier_output, what: str) -> None:
    """Refuse an --output that would destroy a run, its base model or something that is not an earlier output of
    this command."""
    guard_output(out, "--output", run)
    base = run_base(run)
    if Path(base).exists() and out.resolve() == Path(base).resolve():
        raise UserError(f"--output {out} is the run's base model; replacing it would delete it, so this is refused "
                        "even with --overwrite; choose a new folder for --output")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file; pass a folder path")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} is not empty; pass --overwrite to replace it or choose another --output")
        if not is_earlier_output(out):
            raise UserError(f"--output {out} is not {what}; --overwrite replaces only an earlier one: choose a new "
                            "folder for --output")


@dataclass
class Merged:
    model: object  # the merged transformers model, fp32
    tokenizer: object
    base: str
    record: dict  # what unitune_merge.json records

    def describe(self) -> str:
        if not self.record["qlora"]:
            return "a LoRA run: merged into its base"
        return f"a QLoRA run: merged into the {self.record['merge_base']} base"


def merge_adapter(run: Path, merge_base: str = "quantized") -> Merged:
    """Merge ``run``'s adapter into its base (in fp32: exact for an fp32 base); nothing written."""
    check_run(run)
    base = resolve_model(run_base(run))
    model, used = merged_model(run, base, merge_base)
    tokenizer = load_tokenizer(str(run))  # the run's tokenizer carries the chat template it trained with
    if scores(run):  # a reward model reads its score at the last token that is not padding: its pad, as trained
        model.config.pad_token_id = tokenizer.pad_token_id
    record = {"run": str(run.resolve()), "base_model": base, "qlora": qlora_dtype(run) is not None,
              "merge_base": used}
    return Merged(model, tokenizer, base, record)


def save_merged(merged: Merged, run: Path, folder: Path, dtype: str) -> None:
    """Write the merged model, tokenizer, generation config and merge record into ``folder``."""
    merged.model.to(DTYPES[dtype]).save_pretrained(folder, safe_serialization=True)
    merged.tokenizer.save_pretrained(folder)
    if (run / "generation_config.json").exists():  # its EOS ids stop generation at the end of a turn
        shutil.copy2(run / "generation_config.json", folder / "generation_config.json")
    write_json_atomic(folder / MERGE_FILE, {**merged.record, "dtype": dtype})


def merge_run(cfg: MergeConfig) -> Path:
    run, out = Path(cfg.run), Path(cfg.output)
    check_run(run)
    check_output(out, run, cfg.overwrite, is_model_folder,
                 "a merged model (config.json and *.safetensors, no sub-folders)")
    merged = merge_adapter(run, cfg.merge_base)
    print(f"unitune merge: {merged.base} + {run} -> {out} ({cfg.dtype}; {merged.describe()})", flush=True)
    tmp = temp_dir_beside(out)
    try:
        save_merged(merged, run, tmp, cfg.dtype)
        publish_tree(tmp)
        replace_dir(tmp, out)  # an old --output (only with --overwrite) goes once the new folder is complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"unitune merge: wrote {out}", flush=True)
    return out


def guard_output(out: Path, flag: str, run: Path | None = None) -> None:
    """Refuse an --output whose replacement would destroy a run, its checkpoints or a folder that holds others."""
    where = out.resolve()
    why = protected_folders(run).get(where)
    if why is None and run is not None and run.resolve() in where.parents:
        inside = where.relative_to(run.resolve()).parts[0]
        why = f"inside the run's checkpoint {inside}" if inside.startswith("checkpoint-") else None
    if why is None and where.is_dir() and (is_run_folder(where) or any(where.glob("checkpoint-*"))):
        why = "a training run folder"
    if why:
        raise UserError(f"{flag} {out} is {why}; replacing it would delete what is there, so this is refused even "
                        f"with --overwrite; choose a new folder for {flag}")
