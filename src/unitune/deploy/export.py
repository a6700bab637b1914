"""`unitune export`: a run -> a model llama.cpp and Ollama run (GGUF + Modelfile), or a merged safetensors folder.

    unitune export --run runs/demo/sft_smollm2-135m-instruct --output exported/sft          # model-f16.gguf
    unitune export --run runs/demo/sft_smollm2-135m-instruct --output exported/sft-q8 --quant q8_0
    ollama create sft -f exported/sft/Modelfile && ollama run sft

The adapter is merged as `unitune merge` does (into the dequantised 4-bit base for a QLoRA run), then written
with the gguf package: f32, f16, bf16 and q8_0 here; k-quants (q4_k_m, ...) by llama.cpp's `llama-quantize`
when it is on PATH. Nothing is downloaded or compiled at export time.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..config import K_QUANTS, ExportConfig
from ..errors import UserError
from ..files import publish_tree, replace_dir, temp_dir_beside, write_json_atomic, write_text_atomic
from .merge import check_output, check_run, is_model_folder, merge_adapter, save_merged

EXPORT_FILE = "unitune_export.json"
QUANTIZE_BIN = "llama-quantize"


def is_export_folder(folder: Path) -> bool:
    """What an earlier export wrote: its record and files, no sub-folders."""
    return (folder / EXPORT_FILE).exists() and not any(p.is_dir() for p in folder.iterdir())


def default_system(tokenizer) -> str | None:
    """The system text a chat template adds when a conversation has none (SmolLM2's and Qwen's do)."""
    import re

    probe = "\x00probe"
    text = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
    found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", text[: text.find(probe)], re.S)
    return found.group(1) if found else None


def modelfile(gguf_name: str, tokenizer, stop_tokens: list[str]) -> str:
    """An Ollama Modelfile for the GGUF beside it. The GGUF carries the Jinja chat template, which Ollama matches
    against the families it knows; ChatML is spelt out as a Go TEMPLATE so it never depends on that match, with
    the template's default system prompt as SYSTEM (Ollama passes it in .Messages), as the model was trained."""
    lines = ["# Ollama: ollama create <name> -f Modelfile, then ollama run <name>", f"FROM ./{gguf_name}"]
    template = tokenizer.chat_template or ""
    if "<|im_start|>" in template and "<|im_end|>" in template:
        lines += ['TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
                  '{{ .Content }}<|im_end|>', '{{ end }}<|im_start|>assistant', '"""']
        system = default_system(tokenizer)
        if system:
            lines.append(f'SYSTEM """{system}"""')
    elif not template:
        lines.append("# the model has no chat template: Ollama will send prompts as raw text")
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    return "\n".join(lines) + "\n"


def stop_tokens(tokenizer, generation_config) -> list[str]:
    from ..templates import chat_format

    ids = chat_format(tokenizer).stop_ids(generation_config) if tokenizer.chat_template else []
    return [token for token in tokenizer.convert_ids_to_tokens(ids) if token]


def llama_quantize(source: Path, target: Path, quant: str) -> None:
    """k-quants come from llama.cpp's own quantizer: the llama-quantize binary on PATH, else the same function in
    llama-cpp-python when it is installed. Nothing is downloaded or built here."""
    binary = shutil.which(QUANTIZE_BIN)
    if binary is None:
        return quantize_in_process(source, target, quant)
    print(f"unitune export: {QUANTIZE_BIN} {source.name} -> {target.name} ({quant.upper()})", flush=True)
    done = subprocess.run([binary, str(source), str(target), quant.upper()], capture_output=True, text=True)
    if done.returncode != 0 or not target.exists():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{QUANTIZE_BIN} failed (exit {done.returncode}): {last[0][:200]}")


def missing_quantizer(quant: str) -> UserError:
    return UserError(f"--quant {quant} needs llama.cpp's quantizer: {QUANTIZE_BIN} on PATH (build llama.cpp or "
                     "install it with your package manager, e.g. `brew install llama.cpp`) or `pip install "
                     "llama-cpp-python`; or export --quant q8_0 or f16 without it")


def quantize_in_process(source: Path, target: Path, quant: str) -> None:
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError):  # not installed, or its library does not load
        raise missing_quantizer(quant) from None
    import ctypes

    from llama_cpp._utils import suppress_stdout_stderr  # llama.cpp prints a line per tensor

    from ..console import is_quiet

    print(f"unitune export: llama.cpp (llama-cpp-python) {source.name} -> {target.name} ({quant.upper()})",
          flush=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    with suppress_stdout_stderr(disable=not is_quiet()):
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if failed:
        raise UserError(f"llama.cpp could not quantize {source.name} to {quant.upper()}; run again with --verbose "
                        "to see its log")


def has_quantizer() -> bool:
    import importlib.util

    if shutil.which(QUANTIZE_BIN):
        return True
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except ValueError:  # a module entry without a spec (tests block the import this way)
        return False


def preflight(cfg: ExportConfig, run: Path) -> None:
    """What would fail after the merge (minutes for a large model), checked before it."""
    import json

    from transformers import AutoConfig

    from ..models.load import resolve_model
    from ..train.trained import refuse_reward_model
    from .gguf_writer import check_supported
    from .merge import run_base

    if cfg.format != "gguf":
        return
    refuse_reward_model(run, "be exported to GGUF for llama.cpp or Ollama")
    if cfg.quant in K_QUANTS and not has_quantizer():
        raise missing_quantizer(cfg.quant)
    tokenizer_json = run / "tokenizer.json"
    if not tokenizer_json.exists():
        raise UserError(f"{run} has no tokenizer.json (a fast tokenizer); GGUF export needs one")
    check_supported(AutoConfig.from_pretrained(resolve_model(run_base(run))),
                    json.loads(tokenizer_json.read_text(encoding="utf-8")))


def write_export(cfg: ExportConfig, run: Path, folder: Path) -> str:
    """Merge and write the export into the empty ``folder``; return the main file's name."""
    from ..models.load import generation_config
    from .gguf_writer import write_gguf

    merged = merge_adapter(run, cfg.merge_base)
    print(f"unitune export: {merged.describe()}", flush=True)
    if cfg.format == "safetensors":
        save_merged(merged, run, folder, "float32")
        write_json_atomic(folder / EXPORT_FILE, {**merged.record, "format": "safetensors", "dtype": "float32"})
        return "model.safetensors"
    written = cfg.quant if cfg.quant not in K_QUANTS else "bf16"  # bf16 keeps fp32's range for the quantizer
    name = f"model-{cfg.quant}.gguf"
    tokenizer_dir = folder / ".tokenizer"
    merged.tokenizer.save_pretrained(tokenizer_dir)
    merged.model.config.save_pretrained(tokenizer_dir)  # special ids only config.json holds (Qwen2's BOS)
    try:
        write_gguf(merged.model, merged.tokenizer, tokenizer_dir, folder / f"model-{written}.gguf", written,
                   run.name)
    finally:
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
    if cfg.quant in K_QUANTS:
        llama_quantize(folder / f"model-{written}.gguf", folder / name, cfg.quant)
        (folder / f"model-{written}.gguf").unlink()
    stops = stop_tokens(merged.tokenizer, generation_config(str(run)))
    write_text_atomic(folder / "Modelfile", modelfile(name, merged.tokenizer, stops))
    write_json_atomic(folder / EXPORT_FILE, {**merged.record, "format": "gguf", "quant": cfg.quant, "file": name,
                                             "stop": stops})
    return name


def run_export(cfg: ExportConfig) -> Path:
    run, out = Path(cfg.run), Path(cfg.output)
    check_run(run, "export")
    check_output(out, run, cfg.overwrite, lambda f: is_export_folder(f) or is_model_folder(f),
                 "an earlier export (unitune_export.json, no sub-folders)")
    preflight(cfg, run)
    what = "GGUF " + cfg.quant if cfg.format == "gguf" else "safetensors"
    print(f"unitune export: {run} -> {out} ({what})", flush=True)
    tmp = temp_dir_beside(out)
    try:
        name = write_export(cfg, run, tmp)
        publish_tree(tmp)
        replace_dir(tmp, out)  # an earlier export (only with --overwrite) goes once the new one is complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"unitune export: wrote {out / name}", flush=True)
    return out / name
