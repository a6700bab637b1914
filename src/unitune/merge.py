"""`unitune merge`: base + LoRA adapter -> one full model folder (safetensors) with the tokenizer.

    unitune merge --run runs/sft_smollm2-135m-instruct --output merged/sft --dtype bfloat16
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .config import MERGE_DTYPES, MergeConfig
from .errors import UserError
from .models import load_tokenizer, resolve_model
from .runs import adapter_base, guard_output, read_run, replace_dir, temp_dir_beside

DTYPES = {name: getattr(torch, name) for name in MERGE_DTYPES}


def run_base(run: Path) -> str:
    """The base model a run was trained from: unitune_run.json, else adapter_config.json."""
    base = (read_run(run) or {}).get("base_model") or adapter_base(run)
    if not base:
        raise UserError(f"{run} has no readable adapter_config.json; pass a finished run folder to --run")
    return base


def is_model_folder(folder: Path) -> bool:
    """What an earlier merge wrote: a model's config and weights, no sub-folders (runs, checkpoints, anything else)."""
    return ((folder / "config.json").exists() and any(folder.glob("*.safetensors"))
            and not any(p.is_dir() for p in folder.iterdir()))


def merge_run(cfg: MergeConfig) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, out = Path(cfg.run), Path(cfg.output)
    if not (run / "adapter_config.json").exists():
        raise UserError(f"{run} holds no adapter (adapter_config.json); pass a finished run folder to --run")
    guard_output(out, "--output", run)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file; pass a folder path")
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise UserError(f"{out} is not empty; pass --overwrite to replace it or choose another --output")
        if not is_model_folder(out):
            raise UserError(f"--output {out} is not a merged model (config.json and *.safetensors, no sub-folders); "
                            "--overwrite replaces only an earlier merge: choose a new folder for --output")
    base = resolve_model(run_base(run))
    print(f"unitune merge: {base} + {run} -> {out} ({cfg.dtype})", flush=True)
    # Merge in fp32 (exact for an fp32 base), then cast once for saving.
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(run)).merge_and_unload()
    merged = merged.to(DTYPES[cfg.dtype])
    tokenizer = load_tokenizer(str(run))  # the run's tokenizer carries the chat template it trained with
    tmp = temp_dir_beside(out)
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if (run / "generation_config.json").exists():  # its EOS ids stop generation at the end of a turn
            shutil.copy2(run / "generation_config.json", tmp / "generation_config.json")
        replace_dir(tmp, out)  # an old --output (only with --overwrite) goes once the new folder is complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"unitune merge: wrote {out}", flush=True)
    return out
