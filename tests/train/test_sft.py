"""SFT end to end on the tiny model: weights change, every run file is written, the seed snippet loads it."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from unitune.cli import main, parse_config
from unitune.config import TrainConfig
from unitune.data.load import DEMO_DIR
from unitune.data.pipeline import prepare
from unitune.methods import METHODS
from unitune.models.hardware import choose_hardware
from unitune.templates import chat_format
from unitune.train.records import RUN_FILE
from unitune.train.methods import trainer_module
from unitune.train.run import data_settings, training_args

from conftest import SEED_FILES, lora_b_norm, read_json


def test_sft_two_steps_writes_a_complete_run(tiny_args, tmp_path):
    assert main(tiny_args("sft", "--save_steps", "1", "--eval_split", "test_sft", "--max_eval_samples", "4")) == 0
    out = tmp_path / "sft_run"
    for name in SEED_FILES:
        assert (out / name).exists(), name
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    assert lora_b_norm(out) > 0  # LoRA B starts at zero: any mass means the adapter trained
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 2
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    assert any("eval_loss" in e for e in state["log_history"])
    run = read_json(out / RUN_FILE)
    assert run["method"] == "sft" and run["train_split"] == "train_sft" and run["dataset"] == str(DEMO_DIR)
    assert run["settings"]["learning_rate"] == 1e-2 and run["hardware"]["device"] == "cpu"
    assert run["train_tokens_seen"] > 0 and run["versions"]["trl"]


def test_seed_snippet_loads_the_run(tiny_args, tmp_path):
    assert main(tiny_args("sft")) == 0
    out = tmp_path / "sft_run"
    base_name = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer("What is 2 + 2?", return_tensors="pt")
    with torch.no_grad():
        base_logits = base(**inputs).logits
    model = PeftModel.from_pretrained(base, out)
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    with torch.no_grad():  # the adapter loaded onto the base and changes its outputs
        assert not torch.allclose(model(**inputs).logits, base_logits)


def test_prompt_tokens_carry_no_loss(tiny_model_dir, tokenizer, tmp_path):
    cfg = parse_config(TrainConfig, ["--method", "sft", "--model_name", str(tiny_model_dir),
                                     "--output_dir", str(tmp_path / "r")], "t")
    spec = METHODS["sft"]
    prepared = prepare(str(DEMO_DIR), "train_sft", spec, data_settings(cfg, 4, "max_train_samples"), tokenizer)
    ds = prepared.converted
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = trainer_module(spec.name).build(cfg, model, tokenizer, ds, None,
                                training_args(cfg, choose_hardware("auto"), tmp_path / "r", False))
    chat = chat_format(tokenizer)
    for row, source in zip(trainer.train_dataset, prepared.rows):
        labels = torch.tensor(row["labels"])
        mask = torch.tensor(chat.encode(source["messages"])["assistant_masks"])  # row by row, as the evaluator does
        assert (labels[mask == 0] == -100).all() and (labels[mask == 1] != -100).all()
        reply = tokenizer.decode(labels[labels != -100])
        assert "user" not in reply and reply.endswith("<|im_end|>") and "Answer:" in reply


def test_train_on_prompt_trains_every_token(tiny_model_dir, tokenizer, tmp_path):
    cfg = parse_config(TrainConfig, ["--method", "sft", "--train_on_prompt"], "t")
    settings = data_settings(cfg, 2, "max_train_samples")
    ds = prepare(str(DEMO_DIR), "train_sft", METHODS["sft"], settings, tokenizer).converted
    assert all(row["labels"] == row["input_ids"] for row in ds)


def test_dry_run_trains_nothing(tiny_args, tmp_path, capsys):
    assert main(tiny_args("sft", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "plan: sft on 8 rows of 'train_sft', 2 optimizer steps" in out and "tokens per epoch" in out
    assert not (tmp_path / "sft_run").exists()


@pytest.mark.slow
def test_library_noise_stays_out_unless_verbose(tiny_model_dir, tmp_path):
    """Library warnings, weight-loading bars, the datasets bars of a short data preparation and the Trainer's log
    dicts are hidden by default; --verbose shows them; unitune's lines stay, ending with the next command."""
    import os
    import subprocess
    import sys

    def run(*extra):
        cmd = [sys.executable, "-m", "unitune", "train", "--method", "sft", "--model_name", str(tiny_model_dir),
               "--output_dir", str(tmp_path / f"run{len(extra)}"), "--max_steps", "1", "--max_train_samples", "4",
               "--no_data_cache", *extra]  # each run prepares its data (the second would load the first's)
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr

    quiet, verbose = run(), run("--verbose")
    for noise in ("FutureWarning", "Loading weights", "Generating train_sft split", "Tokenizing (assistant-only",
                  "Truncating to --max_length", "{'loss': "):
        assert noise not in quiet and noise in verbose, noise
    assert "unitune: plan:" in quiet and "unitune: run written to" in quiet
    assert quiet.rstrip().splitlines()[-1].startswith(f"unitune: next: unitune eval --runs_dir {tmp_path}  ")
