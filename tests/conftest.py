"""Shared fixtures: the embedded tokenizer and a tiny Llama (2 layers, hidden 64) saved as a local HF folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download; Hub paths are exercised against local folders
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2 converted to a safetensors folder (cached in $UNITUNE_HOME across runs)."""
    from unitune.models import resolve_model

    return Path(resolve_model(None))


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from unitune.models import load_tokenizer

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
