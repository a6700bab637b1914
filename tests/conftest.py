"""Shared fixtures: the embedded tokenizer and a tiny Llama (2 layers, hidden 64) saved as a local HF folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download; Hub paths are exercised against local folders
os.environ.setdefault("OMP_NUM_THREADS", "2")
# The evaluator's base-result cache and the datasets cache: one per test session (subprocesses inherit them), never
# the user's.
os.environ.setdefault("UNITUNE_EVAL_CACHE", tempfile.mkdtemp(prefix="unitune-eval-cache-"))
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="unitune-datasets-cache-"))

# `make test-fast` (-m "not slow") stays under a minute: a test that trains (it uses one of these fixtures), starts
# a process, a browser, converts a GGUF file or loads the real model is slow; `make test` runs everything.
TRAINING_FIXTURES = {"tiny_args", "runs", "evaluated", "arch_dirs"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2 converted to a safetensors folder (cached in $UNITUNE_HOME across runs)."""
    from unitune.models.load import resolve_model

    return Path(resolve_model(None))


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from unitune.models.load import load_tokenizer

    return load_tokenizer(str(embedded_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A randomly initialised 2-layer Llama with the embedded tokenizer, laid out like a Hub model repo."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_args(tiny_model_dir, tmp_path):
    """Flags for a 2-step run of the tiny model; extend with method flags."""
    def make(method: str, *extra: str) -> list[str]:
        return ["train", "--method", method, "--model_name", str(tiny_model_dir),
                "--output_dir", str(tmp_path / f"{method}_run"), "--max_steps", "2",
                "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                "--max_train_samples", "8", "--learning_rate", "1e-2", *extra]
    return make


def read_json(path: Path):
    return json.loads(Path(path).read_text())


ROOT = Path(__file__).resolve().parent.parent  # the repository
# the files of a run the seed's snippet and tools read
SEED_FILES = ["adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "training_args.bin",
              "tokenizer.json", "tokenizer_config.json", "unitune_run.json"]


def seed_snippet_generates(run_dir, max_new_tokens: int = 24) -> str:
    """The seed's snippet (RUNS_STRUCTURE.md): the run's adapter on its recorded base, with plain PEFT, generates."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_name = json.loads((Path(run_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name), run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    messages = [{"role": "user", "content": "What is 21 + 14? End with a line of the form 'Answer: <value>'."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def lora_b_norm(path) -> float:
    """The LoRA B weights' total mass: B starts at zero, so any mass means the adapter trained."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(path) / "adapter_model.safetensors"))
    return sum(t.abs().sum().item() for k, t in weights.items() if "lora_B" in k)


# ---------------------------------------------------------------- chat templates and architectures

def _template_dir() -> Path:
    import trl

    return Path(trl.__file__).parent / "chat_templates"


def load_script(name: str):
    """A script of scripts/ as a module (they are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEXT_TEMPLATES = list(load_script("make_docs").shipped_templates())


def control_tokens(template: str) -> list[str]:
    """The control-token literals a template writes (<|im_start|>, <start_of_turn>, <｜Assistant｜>, <turn|>...)."""
    import re

    found = re.findall(r"<[|｜][^<>\s'\"]{1,40}?[|｜]>|<(?:start|end)_of_turn>|<\|?[a-z_]+\|>|<\|[a-z_]+>|"
                       r"\[gMASK\]|<sop>", template)
    return sorted(set(found))


_TEMPLATED: dict = {}


def with_template(base_tokenizer, name_or_text: str):
    """A copy of the embedded tokenizer carrying one of TRL's shipped templates (or a template text), with the
    template's control tokens added as special tokens, as the model repo's tokenizer has them. Built once per
    template: tests only read it."""
    import copy

    if name_or_text in _TEMPLATED:
        return _TEMPLATED[name_or_text]

    is_name = "{" not in name_or_text
    text = (_template_dir() / f"{name_or_text}.jinja").read_text(encoding="utf-8") if is_name else name_or_text
    tok = copy.deepcopy(base_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": control_tokens(text)}, replace_extra_special_tokens=False)
    tok.add_tokens([t for t in ("<think>", "</think>") if t in text])  # added, not special, as in Qwen3's tokenizer
    tok.chat_template = text
    _TEMPLATED[name_or_text] = tok
    return tok


def tiny_config(arch: str, tokenizer, **extra):
    """A 2-layer, hidden-64 config of one architecture sized for ``tokenizer``."""
    import transformers

    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    specific = {  # what makes each family differ in the scoring path
        "llama": ("LlamaConfig", {"tie_word_embeddings": True}),
        "qwen2": ("Qwen2Config", {}),
        "qwen3": ("Qwen3Config", {"head_dim": 16}),
        "mistral": ("MistralConfig", {"sliding_window": 8}),
        "gemma2": ("Gemma2Config", {"head_dim": 16, "final_logit_softcapping": 5.0, "attn_logit_softcapping": 10.0,
                                    "sliding_window": 8}),
        "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 8}),
        "phi3": ("Phi3Config", {}),
        "lfm2": ("Lfm2Config", {"layer_types": ["conv", "full_attention"]}),  # a hybrid: convolution layers
        # output transforms after the LM head (evaluate.logits), at scales far from 1
        "granite": ("GraniteConfig", {"logits_scaling": 4.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                                      "attention_multiplier": 0.25}),
        "cohere": ("CohereConfig", {"logit_scale": 0.25}),
        "minicpm3": ("MiniCPM3Config", {"dim_model_base": 16, "num_key_value_heads": 4, "q_lora_rank": 32,
                                        "kv_lora_rank": 16, "head_dim": 16, "qk_nope_head_dim": 8,
                                        "qk_rope_head_dim": 8, "v_head_dim": 16}),
        "falcon_h1": ("FalconH1Config", {"lm_head_multiplier": 3.0, "head_dim": 16, "mamba_d_ssm": 64,
                                         "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 8,
                                         "mamba_chunk_size": 16}),
    }
    cls, kwargs = specific[arch]
    return getattr(transformers, cls)(**{**common, **kwargs, **extra})


ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "lfm2")
# Families the scorer is checked on besides: their forward transforms the LM head's output.
SCALED_LOGITS = ("granite", "cohere", "minicpm3", "falcon_h1")


def save_tiny(folder: Path, arch: str, tokenizer) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def kl_to_teacher(student, teacher, tokenizer, prompts, new_tokens: int = 8) -> float:
    """Mean per-token KL(teacher || student) over the teacher's greedy continuations of held-out prompts."""
    import torch

    total, count = 0.0, 0
    for prompt in prompts:
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            full = teacher.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
            positions = slice(ids.shape[1] - 1, full.shape[1] - 1)  # the logits that predict the continuation
            p = torch.log_softmax(teacher(full).logits[0, positions].float(), -1)
            q = torch.log_softmax(student(full).logits[0, positions].float(), -1)
        total += (p.exp() * (p - q)).sum().item()
        count += p.shape[0]
    return total / count


def held_out_prompts(rows: int = 6):
    """The first prompts of the bundled test_gen split, as messages."""
    from unitune.data.load import DEMO_DIR
    from unitune.data.pipeline import DataSettings, prepare
    from unitune.data.views import prompt_messages

    prepared = prepare(str(DEMO_DIR), "test_gen", None, DataSettings({}, rows, "max_samples"))
    return [prompt_messages(row, prepared.format) for row in prepared.rows]


def built_trainer(argv: list[str], tmp_path: Path, model=None):
    """The TRL trainer `unitune <argv>` would build (its method's module), on 4 rows of the method's natural split of
    the bundled data, untrained; ``model``: the one to give it (default: the --model_name causal LM)."""
    from transformers import AutoModelForCausalLM

    from unitune.cli import parse_config
    from unitune.config import TrainConfig
    from unitune.data.load import DEMO_DIR
    from unitune.data.pipeline import prepare
    from unitune.methods import METHODS
    from unitune.models.hardware import choose_hardware
    from unitune.models.load import load_tokenizer
    from unitune.train.methods import trainer_module
    from unitune.train.run import data_settings, training_args

    cfg = parse_config(TrainConfig, argv[1:], "t")
    spec, tokenizer = METHODS[cfg.method], load_tokenizer(cfg.model_name)
    rows = prepare(str(DEMO_DIR), spec.split, spec, data_settings(cfg, 4, "max_train_samples"), tokenizer).converted
    model = model if model is not None else AutoModelForCausalLM.from_pretrained(cfg.model_name)
    return trainer_module(cfg.method).build(cfg, model, tokenizer, rows, None,
                                            training_args(cfg, choose_hardware("auto"), tmp_path / "built", False))
