"""`unitune merge`: base + LoRA adapter -> one full model folder (safetensors) with the tokenizer.

    unitune merge --run runs/sft_smollm2-135m-instruct --output merged/sft --dtype bfloat16
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from .config import MERGE_DTYPES, MergeConfig
from .errors import UserError
from .models import load_tokenizer, resolve_model
from .runs import adapter_base, read_run

DTYPES = {name: getattr(torch, name) for name in MERGE_DTYPES}


def run_base(run: Path) -> str:
    """The base model a run was trained from: unitune_run.json, else adapter_config.json."""
    base = (read_run(run) or {}).get("base_model") or adapter_base(run)
    if not base:
        raise UserError(f"{run} has no readable adapter_config.json; pass a finished run folder to --run")
    return base


def merge_run(cfg: MergeConfig) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, out = Path(cfg.run), Path(cfg.output)
    if not (run / "adapter_config.json").exists():
        raise UserError(f"{run} holds no adapter (adapter_config.json); pass a finished run folder to --run")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise UserError(f"{out} is not empty; pass --overwrite or choose another --output")
    base = resolve_model(run_base(run))
    print(f"unitune merge: {base} + {run} -> {out} ({cfg.dtype})", flush=True)
    # Merge in fp32 (exact for an fp32 base), then cast once for saving.
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(run)).merge_and_unload()
    merged = merged.to(DTYPES[cfg.dtype])
    tokenizer = load_tokenizer(str(run))  # the run's tokenizer carries the chat template it trained with
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if (run / "generation_config.json").exists():  # its EOS ids stop generation at the end of a turn
            shutil.copy2(run / "generation_config.json", tmp / "generation_config.json")
        if out.exists():
            shutil.rmtree(out)  # only with --overwrite, after the new folder is complete
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"unitune merge: wrote {out}", flush=True)
    return out
