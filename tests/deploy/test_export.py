"""From run to running model: GGUF export checked by llama.cpp itself and by transformers, QLoRA merges, chat."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unitune.cli import main

from conftest import read_json, save_tiny

PROMPTS = ["What is 12345 + 678?", "Name three colors of the rainbow.", "Write one sentence about the sea.",
           "Translate 'good morning' into French.", "Give me a tip for learning to cook."]
NEW_TOKENS = 32


def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="the llamacpp extra (make test installs it)")


def hf_greedy(model, tokenizer, text: str, n: int = NEW_TOKENS) -> list[int]:
    """transformers' greedy continuation of ``text`` for exactly ``n`` tokens (no stop), as llama.cpp is run below."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, temperature=None,
                             top_p=None, top_k=None, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def cpp_greedy(llm, tokenizer, text: str, n: int = NEW_TOKENS) -> list[int]:
    prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert prompt == tokenizer(text, add_special_tokens=False)["input_ids"], "llama.cpp tokenizes the prompt differently"
    llm.reset()
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1):
        out.append(token)
        if len(out) == n:
            return out
    return out


def chat_text(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """The embedded model after 2 SFT steps with a learning rate high enough to move it."""
    out = tmp_path_factory.mktemp("real") / "sft_run"
    assert main(["train", "--method", "sft", "--output_dir", str(out), "--max_steps", "2",
                 "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                 "--max_train_samples", "8", "--learning_rate", "1e-3"]) == 0
    return out


@pytest.mark.slow
def test_gguf_metadata_matches_the_shipped_gguf(embedded_dir, tokenizer, tmp_path):
    """The writer, on the embedded model, reproduces what llama.cpp's converter wrote into the shipped file: every
    hyper-parameter, the 49,152 tokens with their types, the merges, the special ids, the chat template and the
    tensor names and shapes."""
    import gguf
    from transformers import AutoModelForCausalLM

    from unitune.deploy.gguf_writer import write_gguf
    from unitune.models.gguf_import import embedded_gguf_path

    tokenizer.save_pretrained(tmp_path / "tok")
    model = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32)
    write_gguf(model, tokenizer, tmp_path / "tok", tmp_path / "m.gguf", "f16", "smollm2")
    ours, shipped = gguf.GGUFReader(tmp_path / "m.gguf"), gguf.GGUFReader(embedded_gguf_path())
    keys = [k for k in shipped.fields if k.startswith(("llama.", "tokenizer."))]
    # pre: the embedded folder's tokenizer.json (transformers' conversion of the GGUF) has GPT-2's split only;
    # SmolLM2's vocabulary has single digits only, so SmolLM's extra digit split changes no token (checked by
    # llama.cpp on "12345" below). add_space_prefix is a SentencePiece flag.
    differ = {"tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.add_space_prefix": None}
    for key in keys:
        expected = differ[key] if key in differ else shipped.fields[key].contents()
        got = ours.fields[key].contents() if key in ours.fields else None
        assert got == expected, key
    assert len(ours.fields["tokenizer.ggml.tokens"].contents()) == 49152
    assert ours.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert {t.name: list(t.shape) for t in ours.tensors} == {t.name: list(t.shape) for t in shipped.tensors}
    assert {t.tensor_type.name for t in ours.tensors} == {"F16", "F32"}


@pytest.mark.slow
def test_export_runs_in_llama_cpp_like_transformers(real_run, tmp_path, capsys):
    """The issue's proof: llama.cpp loads the export and its greedy tokens equal the merged model's for 5 chat
    prompts x 32 tokens at f16; transformers reads the f16 file back with the same output; the chat template and
    the stop token survive into llama.cpp's chat completion; the Modelfile is written.
    q8_0: the file is byte for byte what llama.cpp's own quantizer makes of the f32 export; its greedy tokens
    agree with the fp32 model's on 86% of the 160 positions (measured: 3 prompts equal, 2 part at a near-tie after
    12 and 13 tokens), short of the issue's 90%, which Q8_0 itself does not reach on this model."""
    llama_cpp_module = llama_cpp()
    import ctypes

    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM

    from unitune.deploy.merge import merge_adapter

    for quant in ("f16", "q8_0", "f32"):
        assert main(["export", "--run", str(real_run), "--output", str(tmp_path / quant), "--quant", quant]) == 0
    assert "ollama create" in capsys.readouterr().out
    modelfile = (tmp_path / "f16" / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    # the template's default system prompt, which every trained and evaluated conversation carried
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    record = read_json(tmp_path / "f16" / "unitune_export.json")
    assert record["quant"] == "f16" and record["merge_base"] == "original" and record["stop"] == ["<|im_end|>"]

    params = llama_cpp_module.llama_model_quantize_default_params()
    params.ftype = llama_cpp_module.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp_module.llama_model_quantize(str(tmp_path / "f32" / "model-f32.gguf").encode(),
                                                 str(tmp_path / "cpp-q8_0.gguf").encode(), ctypes.byref(params)) == 0
    theirs = {t.name: t for t in gguf.GGUFReader(tmp_path / "cpp-q8_0.gguf").tensors}
    for ours in gguf.GGUFReader(tmp_path / "q8_0" / "model-q8_0.gguf").tensors:
        assert ours.tensor_type == theirs[ours.name].tensor_type, ours.name
        assert np.array_equal(np.asarray(ours.data), np.asarray(theirs[ours.name].data)), ours.name

    merged = merge_adapter(real_run)
    tokenizer = merged.tokenizer
    expected = {p: hf_greedy(merged.model, tokenizer, chat_text(tokenizer, p)) for p in PROMPTS}
    agree = {}
    for quant in ("f16", "q8_0"):
        llm = llama_cpp_module.Llama(model_path=str(tmp_path / quant / f"model-{quant}.gguf"), n_ctx=512,
                                     n_threads=2, verbose=False)
        try:
            got = {p: cpp_greedy(llm, tokenizer, chat_text(tokenizer, p)) for p in PROMPTS}
            if quant == "f16":
                reply = llm.create_chat_completion([{"role": "user", "content": "Say hello."}], max_tokens=64,
                                                   temperature=0.0)
        finally:
            llm.close()
        agree[quant] = sum(a == b for p in PROMPTS for a, b in zip(got[p], expected[p])) / (len(PROMPTS) * NEW_TOKENS)
        if quant == "f16":
            assert got == expected
    assert agree["q8_0"] >= 0.75, agree
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"].strip()
    assert "<|im_end|>" not in choice["message"]["content"] and "<|im_start|>" not in choice["message"]["content"]

    back = AutoModelForCausalLM.from_pretrained(tmp_path / "f16", gguf_file="model-f16.gguf", dtype=torch.float32)
    assert hf_greedy(back, tokenizer, chat_text(tokenizer, PROMPTS[0])) == expected[PROMPTS[0]]


@pytest.mark.slow
def test_k_quant_through_llama_cpp(real_run, tmp_path):
    """Without llama-quantize on PATH, --quant q4_k_m uses llama.cpp's quantizer through llama-cpp-python; the
    file is Q4_K_M and llama.cpp answers with it."""
    llama_cpp_module = llama_cpp()
    import gguf

    assert main(["export", "--run", str(real_run), "--output", str(tmp_path / "k"), "--quant", "q4_k_m"]) == 0
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["Modelfile", "model-q4_k_m.gguf",
                                                                  "unitune_export.json"]
    reader = gguf.GGUFReader(tmp_path / "k" / "model-q4_k_m.gguf")
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert "Q4_K" in {t.tensor_type.name for t in reader.tensors}
    llm = llama_cpp_module.Llama(model_path=str(tmp_path / "k" / "model-q4_k_m.gguf"), n_ctx=256, n_threads=2,
                                 verbose=False)
    try:
        reply = llm.create_chat_completion([{"role": "user", "content": "What is 2+3?"}], max_tokens=24,
                                           temperature=0.0)
    finally:
        llm.close()
    assert reply["choices"][0]["message"]["content"].strip()


# original 64: wavelengths 6.3 (kept), 32.4 (blended: between 64/4 and 64/1) and 167+ (divided by the factor).
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
PROBES = ["Hello world", " leading space", "Ünïcödé ü 🚀", "a\n\nb  c\t", "12345 + 678 = ?"]


def sentencepiece_style_tokenizer(chat_template: str, legacy: bool = True):
    """A tokenizer laid out as Llama 2's and Mistral's are: BPE with byte fallback, the 256 <0xNN> byte pieces after
    <unk>/<s>/</s>, BOS added by the post-processor; trained on the bundled data (1,000 pieces), with ChatML tokens
    for the chat template. legacy: their tokenizer.json (a Prepend('\u2581') + Replace(' ', '\u2581') normalizer);
    else transformers 5's own LlamaTokenizer on those pieces (Metaspace, prepend_scheme 'first')."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from unitune.data.load import load_split, resolve_dataset

    texts = [m["content"] for row in load_split(resolve_dataset(None), "train_sft") for m in row["messages"]]
    spm = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    spm.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    spm.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>", *bytes_],
                                                       limit_alphabet=200, show_progress=False))
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=spm, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if not legacy:
        from transformers import LlamaTokenizer

        model = json.loads(spm.to_str())["model"]
        tokenizer = LlamaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], legacy=False)
        assert json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"]["prepend_scheme"] == "first"
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template, tokenizer.eos_token, tokenizer.pad_token = chat_template, "<|im_end|>", "<unk>"
    return tokenizer


def save_base(folder: Path, kind: str, tokenizer) -> Path:
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config

    if kind in ("llama", "qwen2"):
        return save_tiny(folder, kind, tokenizer)
    if kind == "qwen2-padded":  # an embedding with rows past the tokenizer's, as Qwen2's real ones have
        torch.manual_seed(0)
        config = tiny_config("qwen2", tokenizer)
        config.vocab_size = len(tokenizer) + 64
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder
    if kind.startswith("llama-spm"):
        tokenizer = sentencepiece_style_tokenizer(tokenizer.chat_template, legacy=kind == "llama-spm")
    torch.manual_seed(0)
    extra = {"rope_parameters": LLAMA3_ROPE} if kind == "llama3-rope" else {}
    AutoModelForCausalLM.from_config(tiny_config("llama", tokenizer, **extra)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("kind,quant,tolerance", [("llama", "f16", 2e-3), ("qwen2", "f16", 2e-3),
                                                  ("llama3-rope", "f32", 1e-3), ("llama-spm", "f16", 2e-3),
                                                  ("llama-spm-first", "f16", 2e-3), ("qwen2-padded", "f16", 2e-3)])
def test_tiny_export_logits_match_llama_cpp(kind, quant, tolerance, tokenizer, tmp_path):
    """Llama (q/k permuted, tied embeddings), Qwen2 (biases, untied output, no permutation), Llama 3.1's rope
    scaling (per-frequency factors in rope_freqs) and a SentencePiece-style tokenizer (Llama 2, Mistral): llama.cpp
    tokenizes as transformers does and its logits on a chat prompt equal the merged model's within rounding.
    Measured max differences: 4e-4 at f16 (logits of std 0.16); 2e-4 with llama3 rope at f32, 5e-3 without the
    factors. Greedy tokens of a random model flip on near-ties, so logits are compared."""
    import numpy as np

    from unitune.deploy.merge import merge_adapter

    Llama = llama_cpp().Llama
    base = save_base(tmp_path / "base", kind, tokenizer)
    run = tmp_path / "run"
    assert main(["train", "--method", "sft", "--model_name", str(base), "--output_dir", str(run), "--max_steps", "2",
                 "--per_device_train_batch_size", "2", "--max_train_samples", "8", "--learning_rate", "1e-2"]) == 0
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "out"), "--quant", quant]) == 0
    merged = merge_adapter(run)
    prompt = "Write a long sentence about the sea, the sky and the wind blowing over the water."
    ids = merged.tokenizer(chat_text(merged.tokenizer, prompt), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        expected = merged.model(torch.tensor([ids])).logits[0].numpy()
    llm = Llama(model_path=str(tmp_path / "out" / f"model-{quant}.gguf"), n_ctx=256, n_threads=2, logits_all=True,
                verbose=False)
    try:
        for probe in PROBES:  # in a chat prompt, as chat and serving send text
            text = chat_text(merged.tokenizer, probe)
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
                merged.tokenizer(text, add_special_tokens=False)["input_ids"], probe
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert np.abs(got - expected).max() < tolerance, np.abs(got - expected).max()


def test_qlora_merges_into_the_quantized_base(tiny_args, tiny_model_dir, tmp_path):
    """A QLoRA adapter corrected the 4-bit weights: merged into the dequantised 4-bit base (the default) the model
    equals the trained one, the adapter on the 4-bit weights (measured: 6e-7 on logits of scale 0.7); merged into the
    original weights it is off by the quantisation error (5e-2). The reference holds the 4-bit weights exactly,
    dequantised in fp32: bitsandbytes' own CPU forward differs from them by itself on some CPUs (5e-3 on a CPU with
    avx512_bf16, 3e-7 on one without), so against it the merge is only much closer than the original weights. The
    merge records which base it used."""
    from peft import PeftModel

    from unitune.deploy.merge import merge_adapter
    from unitune.models.hardware import Hardware
    from unitune.models.load import load_model, load_tokenizer

    run = tmp_path / "sft_run"
    assert main(tiny_args("sft", "--use_qlora", "true", "--learning_rate", "5e-2", "--max_steps", "3")) == 0
    assert read_json(run / "unitune_run.json")["hardware"]["qlora"] is True
    tokenizer = load_tokenizer(str(run))
    batch = tokenizer(["What is 2+3? Answer briefly.", "Name three colors of the rainbow."], return_tensors="pt",
                      padding=True)

    def four_bit():
        return load_model(str(tiny_model_dir), Hardware("cpu", torch.float32, True, False, "test"))

    exact = PeftModel.from_pretrained(four_bit().dequantize(dtype=torch.float32), str(run)).eval()
    kernel = PeftModel.from_pretrained(four_bit(), str(run)).eval()
    with torch.inference_mode():
        reference, through_kernel = exact(**batch).logits, kernel(**batch).logits.float()
        quantized = merge_adapter(run).model(**batch).logits
        original = merge_adapter(run, "original").model(**batch).logits
    near, far = (quantized - reference).abs().max().item(), (original - reference).abs().max().item()
    assert near < 1e-4 and far > 100 * near, (near, far)
    kernel_near, kernel_far = ((m - through_kernel).abs().max().item() for m in (quantized, original))
    assert kernel_far > 4 * kernel_near, (kernel_near, kernel_far)

    assert main(["merge", "--run", str(run), "--output", str(tmp_path / "m")]) == 0
    assert read_json(tmp_path / "m" / "unitune_merge.json")["merge_base"] == "quantized"
    assert main(["merge", "--run", str(run), "--output", str(tmp_path / "o"), "--merge_base", "original"]) == 0
    assert read_json(tmp_path / "o" / "unitune_merge.json")["merge_base"] == "original"


def test_export_errors_are_one_line(tiny_args, tiny_model_dir, tokenizer, tmp_path, capsys, monkeypatch):
    """Not a run, an unknown quant, an existing --output, an --output that is the run or its parent, a k-quant
    without llama-quantize, an architecture GGUF export does not know: one line each, nothing written or lost."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path / "sft_run"
    assert main(tiny_args("sft")) == 0
    capsys.readouterr()

    def fails(*argv: str) -> str:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    assert "holds no adapter" in fails("--run", str(tmp_path), "--output", str(tmp_path / "x"))
    assert "unknown --quant 'q4_k_x'" in fails("--run", str(run), "--output", str(tmp_path / "x"), "--quant", "q4_k_x")
    assert "the run folder" in fails("--run", str(run), "--output", str(run), "--overwrite")
    assert "the run's base model" in fails("--run", str(run), "--output", str(tiny_model_dir), "--overwrite")
    assert "--quant is for --format gguf" in fails("--run", str(run), "--output", str(tmp_path / "x"),
                                                   "--format", "safetensors", "--quant", "q8_0")
    assert "a parent of the run folder" in fails("--run", str(run), "--output", str(tmp_path), "--overwrite")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # neither llama-quantize nor llama-cpp-python
    assert "needs llama.cpp's quantizer: llama-quantize on PATH" in fails("--run", str(run), "--output", str(tmp_path / "k"),
                                                              "--quant", "q4_k_m")
    assert not (tmp_path / "k").exists() and not list(tmp_path.glob(".k-*"))  # refused before any merge
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert "pass --overwrite" in fails("--run", str(run), "--output", str(tmp_path / "taken"))
    assert "not an earlier export" in fails("--run", str(run), "--output", str(tmp_path / "taken"), "--overwrite")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"

    phi = save_tiny(tmp_path / "phi3", "phi3", tokenizer)
    adapter = tmp_path / "phi_run"
    get_peft_model(AutoModelForCausalLM.from_pretrained(phi), LoraConfig(target_modules="all-linear")).save_pretrained(
        adapter)
    tokenizer.save_pretrained(adapter)
    err = fails("--run", str(adapter), "--output", str(tmp_path / "p"))
    assert "GGUF export supports LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM" in err and "Phi3" in err
    assert not (tmp_path / "p").exists()


def test_k_quants_go_through_llama_quantize(tiny_args, tmp_path, monkeypatch):
    """With llama-quantize on PATH, --quant q4_k_m hands it the bf16 file as `llama-quantize IN OUT Q4_K_M` and keeps
    only its output (a stand-in binary records the call: llama.cpp's tools are not built here; the real quantizer
    is tested through llama-cpp-python above)."""
    run = tmp_path / "sft_run"
    assert main(tiny_args("sft")) == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "llama-quantize"
    tool.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'called'}\ncp \"$1\" \"$2\"\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "k"), "--quant", "q4_k_m"]) == 0
    source, target, kind = (tmp_path / "called").read_text().split()
    assert Path(source).name == "model-bf16.gguf" and Path(target).name == "model-q4_k_m.gguf" and kind == "Q4_K_M"
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["Modelfile", "model-q4_k_m.gguf",
                                                                  "unitune_export.json"]
    assert "FROM ./model-q4_k_m.gguf" in (tmp_path / "k" / "Modelfile").read_text()


def test_export_safetensors_and_overwrite(tiny_args, tmp_path):
    """--format safetensors writes the merged folder; --overwrite replaces an earlier export only."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "sft_run"
    assert main(tiny_args("sft")) == 0
    out = tmp_path / "st"
    assert main(["export", "--run", str(run), "--output", str(out), "--format", "safetensors"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2
    assert read_json(out / "unitune_export.json")["format"] == "safetensors"
    from unitune.files import umask

    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask() for p in out.iterdir())  # safetensors wrote 0600
    assert main(["export", "--run", str(run), "--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model-f16.gguf", "unitune_export.json"]


# ---------------------------------------------------------------- chat

def chat_cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "unitune", "chat", *argv]


@pytest.mark.slow
def test_chat_from_a_pipe_with_compare(real_run):
    """Piped prompts: each reply in order, labelled by model with --compare; commands work; an unknown command
    is a note on stderr, not the end of the chat."""
    lines = "What is 2+3? Answer with the number.\n/bogus\n/system Answer in French.\nSay hello.\n/quit\nnever\n"
    done = subprocess.run(chat_cli("--run", str(real_run), "--compare", "base", "--max_new_tokens", "24"),
                          input=lines, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    labels = [line.split(">")[0] for line in out if line.startswith(("sft_run>", "base>"))]
    assert labels == ["sft_run", "base", "sft_run", "base"], done.stdout
    assert "5" in out[0] and "unknown command /bogus" in done.stderr
    assert "never" not in done.stdout


@pytest.mark.slow
def test_chat_in_a_terminal_streams(tmp_path):
    """In a terminal (a pty): a banner with the commands, a `you>` prompt, the reply, /reset, /quit."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(chat_cli("--max_new_tokens", "16"), stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True)  # input() writes its prompt to stderr
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, count: int = 1, timeout: float = 300) -> None:
        nonlocal seen
        end = time.time() + timeout
        while seen.count(marker) < count:
            assert time.time() < end, seen.decode(errors="replace")
            assert proc.poll() is None, f"chat exited {proc.returncode}: {seen.decode(errors='replace')}"
            if select.select([master], [], [], 1)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    assert False, seen.decode(errors="replace")

    try:
        read_until(b"you> ")
        assert b"/reset" in seen and b"/system" in seen and b"/quit" in seen
        os.write(master, b"What is 2+3?\n")
        read_until(b"you> ", count=2)
        reply = seen.split(b"base> ")[1].split(b"you> ")[0]
        assert reply.strip(), seen
        os.write(master, b"/reset\n")
        read_until(b"conversation reset")
        os.write(master, b"/quit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_merge_and_export_flag_choices_are_one_line(capsys):
    for argv, flag in ((["merge", "--merge_base", "foo"], "--merge_base"), (["export", "--format", "gg"], "--format"),
                       (["export", "--merge_base", "x"], "--merge_base")):
        assert main([*argv, "--run", "r", "--output", "o"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"argument {flag}: invalid choice" in err and "--help" in err


def test_chat_bad_input(tmp_path, capsys):
    assert main(["chat", "--temperature", "-1"]) == 2
    assert "--temperature must be 0" in capsys.readouterr().err
    model = tmp_path / "model"
    model.mkdir()
    assert main(["chat", "--run", str(model), "--compare", "base"]) == 2
    assert "--compare base needs --run to be a run folder" in capsys.readouterr().err
    assert main(["chat", "--compare", "base"]) == 2
    assert "--compare base needs --run" in capsys.readouterr().err


def test_chat_needs_a_chat_template(tiny_model_dir, tmp_path, capsys):
    import shutil

    from transformers import AutoTokenizer

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    tokenizer.chat_template = None
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer.save_pretrained(plain)
    assert main(["chat", "--run", str(plain)]) == 2
    assert "has no chat template, so it cannot be chatted with" in capsys.readouterr().err


# ---------------------------------------------------------------- the writer's decisions, from tokenizer.json alone

def byte_level(*steps: dict) -> dict:
    return {"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"},
            "pre_tokenizer": steps[0] if len(steps) == 1 else {"type": "Sequence", "pretokenizers": list(steps)}}


def test_pre_tokenizer_names_and_refusals():
    from unitune.deploy.gguf_writer import LLAMA3_SPLIT, check_supported, pre_tokenizer, prepends_space, tokenizer_kind
    from unitune.errors import UserError

    split = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
    assert pre_tokenizer(byte_level({"type": "ByteLevel", "add_prefix_space": False})) == "gpt-2"
    assert pre_tokenizer(byte_level({"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"})) == "smollm"
    assert pre_tokenizer(byte_level({"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}}, split)) == "llama-bpe"
    qwen2 = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
    assert pre_tokenizer(byte_level({"type": "Split", "pattern": {"Regex": qwen2}}, split)) == "qwen2"
    with pytest.raises(UserError, match="does not know this tokenizer's pre-tokenizer"):
        pre_tokenizer(byte_level({"type": "Split", "pattern": {"Regex": r"\w+"}}, split))
    with pytest.raises(UserError, match="not this Unigram tokenizer"):
        tokenizer_kind({"model": {"type": "Unigram"}})
    spm = {"model": {"type": "BPE", "byte_fallback": True}, "decoder": {"type": "Sequence"}}
    assert tokenizer_kind(spm) == "llama"
    assert prepends_space({**spm, "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace"}]}})
    assert prepends_space({**spm, "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "always"}})
    assert not prepends_space({**spm, "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}})

    class Config:
        architectures = ["LlamaForCausalLM"]
        rope_parameters = {"rope_type": "yarn", "factor": 4.0}

    with pytest.raises(UserError, match="rope scaling 'yarn'"):
        check_supported(Config, byte_level({"type": "ByteLevel"}))
    Config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(UserError, match="GGUF export supports LlamaForCausalLM.*this model is GPT2LMHeadModel"):
        check_supported(Config, byte_level({"type": "ByteLevel"}))


def test_llama3_rope_factors_keep_blend_and_divide():
    """On the llama.cpp test's settings every branch of Meta's formula is taken (so that test covers them): the
    fastest frequency kept (1), the slow ones divided by the factor (8), one blended in between."""
    from unitune.deploy.gguf_writer import rope_metadata

    class Writer:
        def __getattr__(self, name):
            return lambda *args: None

    class Config:
        rope_parameters = LLAMA3_ROPE

    factors = rope_metadata(Writer(), Config, 16)
    assert len(factors) == 8 and factors[0] == 1.0 and factors[-1] == 8.0
    blended = [f for f in factors if 1.0 < f < 8.0]
    assert len(blended) == 1


@pytest.mark.slow
def test_a_run_whose_cached_base_is_gone_still_merges(real_run, tmp_path):
    """The embedded base lives in $UNITUNE_HOME's cache; a run recorded under another home (or a cleaned cache)
    converts the embedded model again instead of failing."""
    import shutil

    from unitune.deploy.merge import run_base
    from unitune.models.load import resolve_model

    moved = tmp_path / "sft_run"
    shutil.copytree(real_run, moved)
    record = read_json(moved / "unitune_run.json")
    assert record["settings"]["model_name"] is None
    record["base_model"] = str(tmp_path / "old-home" / "models" / "smollm2-135m-instruct-0123456789ab")
    (moved / "unitune_run.json").write_text(json.dumps(record))
    assert run_base(moved) == resolve_model(None)
    assert main(["merge", "--run", str(moved), "--output", str(tmp_path / "m")]) == 0
