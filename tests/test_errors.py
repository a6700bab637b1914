"""Bad input: one line naming the problem and the fix, a non-zero exit, no traceback."""

import os
import subprocess
import sys

import pytest

from unitune.cli import main
from unitune.hub import hub_reachable


def run_cli(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.fixture(autouse=True)
def offline():
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


def test_unknown_method_subprocess():
    """The real process: exit status 2, one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "unitune", "train", "--method", "ppo"], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("unitune: error: unknown method 'ppo' (did you mean 'dpo'?); "
                                   "choose --method from: sft, dpo, orpo, kto, grpo")
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback(capsys):
    from unitune.errors import UserError

    with pytest.raises(UserError):
        main(["train", "--method", "ppo", "--debug"])


def test_seed_script_same_errors():
    proc = subprocess.run([sys.executable, "code/SFT.py", "--method", "sft", "--dataset", "/nope/data.jsonl"],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "dataset path not found: /nope/data.jsonl" in proc.stderr


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "/does/not/exist"], "dataset path not found: /does/not/exist; check the path"),
    (["--dataset", "someorg/somedata"], "cannot reach the Hugging Face Hub to load dataset 'someorg/somedata'; "
                                        "pass a local folder"),
    (["--split", "train_nope"], "split 'train_nope' not found in"),
    (["--learning_rate", "0"], "--learning_rate must be greater than 0, got 0.0"),
    (["--lora_dropout", "1"], "--lora_dropout must be in [0, 1), got 1.0"),
    (["--max_train_samples", "0"], "--max_train_samples must be at least 1"),
])
def test_bad_input(capsys, tiny_args, extra, message):
    code, line = run_cli(capsys, tiny_args("sft", *extra))
    assert code == 2 and message in line, line


def test_missing_split_lists_available(capsys, tiny_args):
    _, line = run_cli(capsys, tiny_args("sft", "--split", "nope"))
    assert "available splits: train_sft, test_sft, train_prefs, test_prefs, train_gen, test_gen" in line


def test_hub_model_offline(capsys, tiny_args):
    code, line = run_cli(capsys, tiny_args("sft") + ["--model_name", "someorg/somemodel"])
    assert code == 2
    assert "could not load model 'someorg/somemodel' from the Hugging Face Hub" in line
    assert "omit --model_name to use the embedded smollm2-135m-instruct" in line


def test_missing_columns_for_sft(capsys, tiny_args, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "reply": "r"}\n')
    code, line = run_cli(capsys, tiny_args("sft", "--dataset", str(data)))
    assert code == 2
    assert "found columns [question, reply]" in line and "conversational: messages" in line
    assert "prompt_completion: prompt+completion" in line and "text: text" in line


def test_finished_run_is_not_overwritten(capsys, tiny_args, tmp_path):
    out = tmp_path / "sft_run"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    code, line = run_cli(capsys, tiny_args("sft"))
    assert code == 2 and "already holds a finished run; pass --overwrite_output_dir" in line
    assert (out / "adapter_config.json").read_text() == "{}"
