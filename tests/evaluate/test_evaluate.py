"""The unified evaluator and the report, on tiny-model runs."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from unitune.cli import main, parse_config
from unitune.config import EvalConfig
from unitune.data.load import DEMO_DIR
from unitune.errors import UserError
from unitune.evaluate.entries import TRAINING_KEYS, discover, training_metrics
from unitune.evaluate.heldout import EvalData
from unitune.evaluate.scoring import encode_pairs, mean_loss, reply_nll, score_replies

from conftest import ROOT, read_json

METRIC_TYPES = {"test_loss": float, "perplexity": float, "preference_correct": int, "preference_total": int,
                "preference_accuracy": float, "avg_chosen_loss": float, "avg_rejected_loss": float,
                "loss_margin": float, "task_accuracy": float, "generation_samples": list, "model_name": str,
                "model_path": str, "dataset": str, "splits": dict, "eval_time_seconds": float,
                "initial_train_loss": float, "final_train_loss": float, "total_steps": int,
                "training_time_seconds": float, "training_time_hours": float, "evaluated_at": str}
EVAL_FLAGS = ["--max_samples", "6", "--max_new_tokens", "4", "--batch_size", "4", "--max_generation_samples", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Two finished tiny runs (sft, dpo) in one runs folder."""
    root = tmp_path_factory.mktemp("runs")
    for method in ("sft", "dpo"):
        assert main(["train", "--method", method, "--model_name", str(tiny_model_dir), "--output_dir",
                     str(root / f"{method}_tiny"), "--max_steps", "2", "--per_device_train_batch_size", "2",
                     "--gradient_accumulation_steps", "1", "--max_train_samples", "4"]) == 0
    return root


@pytest.fixture(scope="module")
def evaluated(runs):
    assert main(["eval", "--runs_dir", str(runs), *EVAL_FLAGS]) == 0
    return read_json(runs / "evaluation_results.json")


def test_every_key_with_its_type(evaluated):
    assert set(evaluated) == {"base", "sft_tiny", "dpo_tiny"}
    for name in ("sft_tiny", "dpo_tiny"):
        for key, kind in METRIC_TYPES.items():
            assert isinstance(evaluated[name][key], kind), (name, key, evaluated[name][key])
        assert evaluated[name]["best_eval_loss"] is None and evaluated[name]["total_steps"] == 2
    assert evaluated["sft_tiny"]["method"] == "sft" and evaluated["dpo_tiny"]["method"] == "dpo"
    assert evaluated["base"]["splits"] == {"sft": "test_sft", "prefs": "test_prefs", "gen": "test_gen"}


def test_base_entry_has_null_training_metrics(evaluated):
    base = evaluated["base"]
    assert all(base[k] is None for k in TRAINING_KEYS)
    assert isinstance(base["test_loss"], float) and base["preference_total"] == 6


def test_generation_samples_follow_the_flag(evaluated):
    for result in evaluated.values():
        assert len(result["generation_samples"]) == 2  # --max_generation_samples 2
        assert set(result["generation_samples"][0]) == {"prompt", "response"}


def test_training_metrics_from_state(tmp_path):
    """The seed's training keys, from a hand-written trainer_state.json."""
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 30, "log_history": [
        {"step": 10, "loss": 2.5}, {"step": 10, "eval_loss": 2.4}, {"step": 20, "loss": 2.0},
        {"step": 20, "eval_loss": 2.1}, {"step": 30, "loss": 1.5}, {"step": 30, "eval_loss": 2.2},
        {"step": 30, "train_runtime": 360.0, "train_loss": 2.0}]}))
    assert training_metrics(tmp_path) == {
        "initial_train_loss": 2.5, "final_train_loss": 1.5, "best_eval_loss": 2.1, "final_eval_loss": 2.2,
        "total_steps": 30, "training_time_seconds": 360.0, "training_time_hours": 0.1}


def test_rerun_is_deterministic(evaluated, runs, tmp_path):
    out = tmp_path / "again.json"
    assert main(["eval", "--runs_dir", str(runs), "--output", str(out), "--report", "false", "--reuse_base", "false",
                 *EVAL_FLAGS]) == 0
    again = read_json(out)
    assert "cached" not in again["base"]
    for name, result in evaluated.items():
        for key in ("test_loss", "preference_correct", "avg_chosen_loss", "generation_samples"):
            assert again[name][key] == result[key], (name, key)


def test_the_base_is_scored_once_while_nothing_changes(evaluated, runs, tmp_path, monkeypatch):
    from unitune.evaluate import run as evaluate

    loaded, real = [], evaluate.load_entry_model
    monkeypatch.setattr(evaluate, "load_entry_model", lambda entry, device: loaded.append(entry.name) or
                        real(entry, device))
    out = tmp_path / "again.json"
    assert main(["eval", "--runs_dir", str(runs), "--output", str(out), "--report", "false", *EVAL_FLAGS]) == 0
    again = read_json(out)
    assert loaded == ["dpo_tiny", "sft_tiny"] and again["base"]["cached"] is True
    assert {k: v for k, v in again["base"].items() if k != "cached"} == \
        {k: v for k, v in evaluated["base"].items() if k != "cached"}
    loaded.clear()  # a setting the base's results depend on: scored again
    assert main(["eval", "--runs_dir", str(runs), "--output", str(out), "--report", "false", *EVAL_FLAGS,
                 "--max_new_tokens", "3"]) == 0
    assert loaded == ["base", "dpo_tiny", "sft_tiny"] and "cached" not in read_json(out)["base"]


@pytest.mark.slow
def test_batched_scoring_equals_one_at_a_time(tiny_model_dir, tokenizer):
    """Padded, length-sorted batches against a plain HF loss on each sample alone."""
    cfg = EvalConfig(max_samples=12)
    data = EvalData(str(DEMO_DIR), cfg)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    items = data.sft + [(p, c) for p, c, _ in data.pairs] + [(p, r) for p, _, r in data.pairs]
    batched = mean_loss(reply_nll(model, tokenizer, items, batch_size=8))
    # pairs packed as one row per prompt (prompt computed once, replies masked from each other)
    packed = score_replies(model, tokenizer, [(p, [c, r]) for p, c, r in data.pairs], batch_size=5)
    n = len(data.pairs)
    assert mean_loss([s[0] for s in packed]) == pytest.approx(batched[-2 * n:-n], abs=1e-4)
    assert mean_loss([s[1] for s in packed]) == pytest.approx(batched[-n:], abs=1e-4)
    for item, enc, got in zip(items, encode_pairs(tokenizer, items), batched):
        ids = torch.tensor([enc["input_ids"]])
        labels = ids.clone()
        labels[0, torch.tensor(enc["assistant_masks"]) == 0] = -100
        with torch.no_grad():
            expected = model(input_ids=ids, labels=labels).loss.item()
        assert abs(got - expected) < 1e-4


def test_discovery(tmp_path):
    (tmp_path / "dpo_x").mkdir()
    (tmp_path / "dpo_x" / "adapter_config.json").write_text('{"base_model_name_or_path": "b"}')
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "unitune_run.json").write_text('{"method": "kto", "base_model": "c"}')
    (tmp_path / "notes").mkdir()
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "unitune_run.json").write_text('{"method": "sft", "status": "interrupted", '
                                                           '"global_step": 7}')
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "checkpoint-2").mkdir()
    shutil.copytree(tmp_path / "mine", tmp_path / "mine.old-20261129-101010")  # moved aside: not compared
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "unitune_run.json").write_text("[1, 2")  # unreadable record, no adapter: not a run
    entries, skipped = discover(EvalConfig(runs_dir=str(tmp_path)))
    assert [(e.name, e.method, e.base_model) for e in entries] == [("dpo_x", "dpo", "b"), ("mine", "kto", "c")]
    assert skipped["stopped"]["status"] == "interrupted" and "at step 7" in skipped["stopped"]["skipped"]
    assert skipped["killed"]["status"] == "interrupted" and "--resume" in skipped["killed"]["skipped"]
    assert [e.name for e in discover(EvalConfig(runs_dir=str(tmp_path), methods=["kto"]))[0]] == ["mine"]
    assert [e.name for e in discover(EvalConfig(runs_dir=str(tmp_path), runs=["dpo_x"]))[0]] == ["dpo_x"]


def test_a_run_whose_cached_embedded_base_is_gone_is_evaluated_on_the_embedded_model(tmp_path, embedded_dir):
    """Runs trained before the embedded model's cache key changed record a cache folder that no longer exists."""
    (tmp_path / "sft_old").mkdir()
    (tmp_path / "sft_old" / "unitune_run.json").write_text(json.dumps({
        "method": "sft", "base_model": str(tmp_path / "cache" / "smollm2-135m-instruct-46fb1e1006d3"),
        "settings": {"model_name": None}}))
    entries, _ = discover(EvalConfig(runs_dir=str(tmp_path)))
    assert entries[0].base_model == str(embedded_dir)


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_no_runs_is_a_one_line_error(tmp_path, capsys, make):
    assert main(["eval", "--runs_dir", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert ("runs folder not found" in err or "no finished runs in" in err) and "unitune train --method sft" in err


def test_broken_run_gets_an_error_entry(runs, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(runs / "sft_tiny", root / "sft_tiny")
    (root / "dpo_broken").mkdir()
    (root / "dpo_broken" / "adapter_config.json").write_text("{not json")
    assert main(["eval", "--runs_dir", str(root), "--skip_base", "--report", "false", *EVAL_FLAGS]) == 0
    results = read_json(root / "evaluation_results.json")
    assert "error" in results["dpo_broken"] and "test_loss" in results["sft_tiny"]
    (root / "sft_tiny" / "adapter_model.safetensors").write_bytes(b"corrupt")
    assert main(["eval", "--runs_dir", str(root), "--skip_base", "--report", "false", *EVAL_FLAGS]) == 2
    assert "no run could be evaluated" in capsys.readouterr().err


def test_results_write_is_atomic(tmp_path, monkeypatch):
    from unitune import files as runs_module

    target = tmp_path / "evaluation_results.json"
    target.write_text('{"good": 1}')

    def explode(*args, **kwargs):
        raise RuntimeError("crash mid-write")

    monkeypatch.setattr(runs_module.os, "replace", explode)
    with pytest.raises(RuntimeError):
        runs_module.write_json_atomic(target, {"new": 2})
    assert json.loads(target.read_text()) == {"good": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation_results.json"]


def test_report_files(evaluated, runs):
    html = (runs / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # loss curves + a bar chart per metric
    assert "<script" not in html and "http" not in html  # self-contained
    for name in evaluated:
        assert name in html
    md = (runs / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| run | method |") and rows[1].startswith("| base | base |") and "sft_tiny" in md


def test_evaluating_some_runs_keeps_every_other_entry_and_dates_each(evaluated, runs, tmp_path, capsys):
    """`unitune eval --runs a` (the web UI's Evaluate selected runs it so) updates a's entry and keeps the others': the
    base's, a run's not selected, and one whose folder is gone (marked in the report, not dropped). Every entry says
    when it was evaluated, and the report shows it."""
    from datetime import datetime

    root = tmp_path / "runs"
    shutil.copytree(runs / "sft_tiny", root / "sft_tiny")
    shutil.copytree(runs / "dpo_tiny", root / "dpo_tiny")
    earlier = json.loads(json.dumps(evaluated))
    assert all(datetime.fromisoformat(r["evaluated_at"]).tzinfo for r in earlier.values())  # ISO, with its offset
    for name, result in earlier.items():
        result["evaluated_at"] = "2020-01-02 10:00:00+00:00"
        result["model_path"] = str(root / name) if name != "base" else result["model_path"]
    earlier["sft_deleted"] = earlier["sft_tiny"] | {"model_path": str(root / "sft_deleted")}
    (root / "evaluation_results.json").write_text(json.dumps(earlier))
    assert main(["eval", "--runs_dir", str(root), "--runs", "sft_tiny", "--skip_base", "true", *EVAL_FLAGS]) == 0
    assert "(with the earlier results of 3 other entries)" in capsys.readouterr().out
    results = read_json(root / "evaluation_results.json")
    assert set(results) == {"base", "sft_tiny", "dpo_tiny", "sft_deleted"}
    assert {k: results[k] for k in ("base", "dpo_tiny", "sft_deleted")} == \
        {k: earlier[k] for k in ("base", "dpo_tiny", "sft_deleted")}
    fresh = datetime.fromisoformat(results["sft_tiny"]["evaluated_at"])
    assert fresh.year > 2020 and results["sft_tiny"]["test_loss"] == evaluated["sft_tiny"]["test_loss"]
    md, html = (root / "report.md").read_text(), (root / "report.html").read_text()
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert md.splitlines()[2].startswith("| run | method |") and rows["run"].endswith(" evaluated_at |")
    for name in ("base", "dpo_tiny"):
        assert rows[name].endswith(f" {earlier[name]['evaluated_at']} |") and earlier[name]["evaluated_at"] in html
    assert rows["sft_tiny"].endswith(f" {results['sft_tiny']['evaluated_at']} |")
    assert "sft_deleted (run folder gone)" in rows and "sft_deleted <small>(run folder gone)</small>" in html
    assert "dpo_tiny (run folder gone)" not in md


def test_an_unreadable_results_file_is_moved_aside_not_lost(tmp_path, capsys):
    from unitune.evaluate.run import save_results

    path = tmp_path / "evaluation_results.json"
    path.write_text("[1, 2")
    merged = save_results(path, {"sft_a": {"test_loss": 1.0}})
    [aside] = tmp_path.glob("evaluation_results.json.unreadable-*")
    assert aside.read_text() == "[1, 2" and f"moved it to {aside}" in capsys.readouterr().err
    assert read_json(path) == merged and merged["sft_a"]["test_loss"] == 1.0 and merged["sft_a"]["evaluated_at"]


def test_report_command_rewrites_the_report_and_says_where(evaluated, runs, capsys):
    (runs / "report.html").unlink()
    assert main(["report", "--runs_dir", str(runs)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"unitune report: wrote {runs / 'report.html'}")
    assert (runs / "report.html").is_file()


def test_eval_config_rejects_bad_values():
    with pytest.raises(UserError, match="--max_samples must be greater than 0"):
        parse_config(EvalConfig, ["--max_samples", "0"], "unitune eval")
    with pytest.raises(UserError, match="unknown method 'sfx' in --methods"):
        parse_config(EvalConfig, ["--methods", "sfx"], "unitune eval")
    with pytest.raises(UserError, match="--lm_eval_limit must be greater than 0"):
        parse_config(EvalConfig, ["--lm_eval_limit", "0"], "unitune eval")
    with pytest.raises(UserError, match="unknown --answer_format 'gsm8' \\(did you mean 'gsm8k'\\?\\)"):
        parse_config(EvalConfig, ["--answer_format", "gsm8"], "unitune eval")


REWARD_CODE = '''
from pathlib import Path
Path(__file__).with_name("imported").write_text("ran")


def score(prompts, completions, **_):
    return [2.0 for _ in completions]
'''


def test_reward_code_in_a_run_record_runs_only_when_trusted(runs, tmp_path):
    """A runs folder someone sent names its own reward file: evaluating it must not import that file unless asked."""
    root = tmp_path / "runs"
    shutil.copytree(runs / "sft_tiny", root / "grpo_sent")
    (tmp_path / "their_reward.py").write_text(REWARD_CODE)
    record = read_json(root / "grpo_sent" / "unitune_run.json")
    record["method"] = "grpo"
    record["settings"]["reward_funcs"] = [f"{tmp_path / 'their_reward.py'}:score"]
    (root / "grpo_sent" / "unitune_run.json").write_text(json.dumps(record))
    flags = ["eval", "--runs_dir", str(root), "--skip_base", "--skip_perplexity", *EVAL_FLAGS]
    assert main(flags) == 0
    result = read_json(root / "evaluation_results.json")["grpo_sent"]
    assert result["mean_reward"] is None and "--trust_reward_code" in result["mean_reward_note"]
    assert not (tmp_path / "imported").exists()
    assert "mean_reward not computed: run grpo_sent names reward code" in (root / "report.md").read_text()
    assert main(flags + ["--trust_reward_code"]) == 0
    assert read_json(root / "evaluation_results.json")["grpo_sent"]["mean_reward"] == 2.0
    assert (tmp_path / "imported").exists()


def test_reward_funcs_on_the_eval_command_line(runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(runs / "sft_tiny", root / "sft_tiny")
    assert main(["eval", "--runs_dir", str(root), "--skip_perplexity", "--report", "false", "--reward_funcs",
                 "length", *EVAL_FLAGS]) == 0
    results = read_json(root / "evaluation_results.json")
    assert all(results[name]["mean_reward"] <= 0 for name in ("base", "sft_tiny"))  # length: 0 or a penalty
    assert "mean_reward_note" not in results["sft_tiny"]


def test_results_are_readable_by_others(tmp_path):
    """Atomic writes go through a private temp file; the result gets the usual 0644 (under umask 022)."""
    import os

    from unitune.files import temp_dir_beside, write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "results.json", {"a": 1})
        folder = temp_dir_beside(tmp_path / "merged")
        os.umask(0o077)
        write_json_atomic(tmp_path / "private.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600  # the umask still rules


def _as_grpo(source, folder, **settings):
    """A copy of a finished run whose record says GRPO trained it with these reward settings."""
    shutil.copytree(source, folder)
    record = read_json(folder / "unitune_run.json")
    record["method"] = "grpo"
    record["settings"].update(settings)
    (folder / "unitune_run.json").write_text(json.dumps(record))


def test_mean_reward_follows_each_runs_own_rewards(runs, tiny_model_dir, tmp_path):
    """Each GRPO run is scored with its own functions, weights and reward model; the base and other runs get no
    mean_reward unless eval is given --reward_funcs; the report says which rewards made each number."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    root, code = tmp_path / "runs", tmp_path / "their_reward.py"
    code.write_text(REWARD_CODE)  # every completion scores 2.0
    scorer = tmp_path / "scorer"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(
        AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)).save_pretrained(scorer)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(scorer)
    shutil.copytree(runs / "sft_tiny", root / "sft_tiny")
    _as_grpo(runs / "sft_tiny", root / "grpo_half", reward_funcs=[f"{code}:score"], reward_weights=[0.5])
    _as_grpo(runs / "sft_tiny", root / "grpo_two", reward_funcs=[f"{code}:score"] * 2, reward_weights=[1.0, 3.0])
    _as_grpo(runs / "sft_tiny", root / "grpo_model_off", reward_funcs=[f"{code}:score"], reward_model=str(scorer),
             reward_weights=[1.0, 0.0])
    _as_grpo(runs / "sft_tiny", root / "grpo_model", reward_funcs=[f"{code}:score"], reward_model=str(scorer),
             reward_weights=[1.0, 1.0])
    assert main(["eval", "--runs_dir", str(root), "--skip_perplexity", "--trust_reward_code", *EVAL_FLAGS]) == 0
    results = read_json(root / "evaluation_results.json")
    assert results["grpo_half"]["mean_reward"] == 1.0 and results["grpo_two"]["mean_reward"] == 8.0
    assert results["grpo_model_off"]["mean_reward"] == 2.0  # the model's weight 0 counts
    with_model = results["grpo_model"]["mean_reward"]
    assert with_model != 2.0 and abs(with_model) < 100  # 2.0 plus the model's mean score
    assert "mean_reward" not in results["base"] and "mean_reward" not in results["sft_tiny"]
    assert results["grpo_two"]["mean_reward_funcs"] == "score + score (the run's own, weights 1, 3)"
    assert f"grpo_model: mean_reward = score + reward model {scorer} (the run's own, weights 1, 1)" in \
        (root / "report.md").read_text()


def test_a_failing_reward_leaves_the_other_metrics(runs, tmp_path):
    root, code = tmp_path / "runs", tmp_path / "broken.py"
    code.write_text("def score(prompts, completions, **_):\n    raise KeyError('solution')\n")
    _as_grpo(runs / "sft_tiny", root / "grpo_broken", reward_funcs=[f"{code}:score"])
    assert main(["eval", "--runs_dir", str(root), "--skip_base", "--trust_reward_code", "--report", "false",
                 *EVAL_FLAGS]) == 0
    result = read_json(root / "evaluation_results.json")["grpo_broken"]
    assert "error" not in result and result["test_loss"] is not None and result["mean_reward"] is None
    assert result["mean_reward_note"].startswith("not computed: reward function 'score' raised KeyError")


@pytest.mark.parametrize("answer_format,references,right_reply", [
    ("gsm8k", ["6 * 7 = <<6*7=42>>42\n#### 42", "3 + 4 = <<3+4=7>>7\n#### 7"], "{a} so the total is {a}."),
    ("boxed", [r"$\boxed{42}$", r"$\boxed{\frac{7}{2}}$"], r"so $\boxed{{{a}}}$"),
])
def test_task_accuracy_reads_the_datas_answer_format(runs, tmp_path, monkeypatch, capsys, answer_format,
                                                     references, right_reply):
    """GSM8K- and MATH-style answers score right replies as right (they scored 0 against the demo's Answer: line)."""
    from unitune import answers
    from unitune.evaluate import run as evaluate

    rows = [{"prompt": f"Question {i}?", "answer": ref} for i, ref in enumerate(references)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    values = {f"Question {i}?": ("3.5" if "frac" in ref else answers.reference_value(ref, answer_format))
              for i, ref in enumerate(references)}
    replies = {"right": lambda v: right_reply.format(a=v), "wrong": lambda v: right_reply.format(a=v + "1")}
    root = tmp_path / "runs"
    shutil.copytree(runs / "sft_tiny", root / "sft_tiny")
    for kind, make in replies.items():
        monkeypatch.setattr(evaluate, "generate_replies", lambda model, tok, prompts, *a, **k: [
            make(values[p[-1]["content"]]) for p in prompts])
        assert main(["eval", "--runs_dir", str(root), "--skip_base", "--report", "false", "--dataset", str(data),
                     "--gen_split", "train", *EVAL_FLAGS]) == 0
        result = read_json(root / "evaluation_results.json")["sft_tiny"]
        assert result["task_accuracy"] == (1.0 if kind == "right" else 0.0), (kind, result["generation_samples"])
        assert result["answer_format"] == answer_format
    assert f"answers checked as {answer_format} (2 of 2 answers are written that way)" in capsys.readouterr().out


LM_EVAL_TASK = ROOT / "examples" / "lm_eval" / "unitune_demo_gen.yaml"


def test_lm_eval_task_reads_the_answer_line_of_right_replies():
    """The shipped task's filter takes the value of the Answer: line: every chosen reply of test_gen scores."""
    import re

    import yaml
    from datasets import load_dataset

    task = yaml.safe_load(LM_EVAL_TASK.read_text())
    pattern = re.compile(task["filter_list"][0]["filter"][0]["regex_pattern"])
    rows = load_dataset(str(DEMO_DIR), split="test_gen")
    for row in rows:
        found = pattern.findall(row["chosen"][-1]["content"])
        assert found and found[0].lower() == row["answer"].lower(), (row["chosen"][-1]["content"], found)


def test_lm_eval_task_runs_on_the_base_and_every_run(runs, tmp_path, monkeypatch, capsys):
    """unitune eval --lm_eval_tasks runs lm-eval offline on the base and each run (adapter as PEFT), merges the
    task's metrics under "lm_eval" and shows them in the report."""
    monkeypatch.chdir(ROOT)  # the task's data_files path is relative to the repository root
    root = tmp_path / "runs"
    shutil.copytree(runs / "sft_tiny", root / "sft_tiny")
    assert main(["eval", "--runs_dir", str(root), "--skip_perplexity", *EVAL_FLAGS, "--lm_eval_tasks",
                 "unitune_demo_gen", "--lm_eval_include_path", "examples/lm_eval", "--lm_eval_limit", "3"]) == 0
    results = read_json(root / "evaluation_results.json")
    for name in ("base", "sft_tiny"):
        metrics = results[name]["lm_eval"]["unitune_demo_gen"]
        assert set(metrics) == {"exact_match,answer_line"} and 0.0 <= metrics["exact_match,answer_line"] <= 1.0
    assert "lm-eval unitune_demo_gen on sft_tiny" in capsys.readouterr().out
    assert "| run | unitune_demo_gen exact_match,answer_line |" in (root / "report.md").read_text()


def test_lm_eval_problems_are_one_line_before_loading(runs, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(runs / "sft_tiny", root / "sft_tiny")
    assert main(["eval", "--runs_dir", str(root), "--lm_eval_tasks", "unitune_demo_gem",
                 "--lm_eval_include_path", str(ROOT / "examples" / "lm_eval")]) == 2
    assert "unknown lm-eval task 'unitune_demo_gem' (did you mean 'unitune_demo_gen'?)" in capsys.readouterr().err
    assert main(["eval", "--runs_dir", str(root), "--lm_eval_tasks", "x", "--lm_eval_include_path",
                 str(tmp_path / "nowhere")]) == 2
    assert "--lm_eval_include_path" in capsys.readouterr().err and not (root / "evaluation_results.json").exists()


def test_lm_eval_hub_task_offline_is_one_line_and_keeps_the_results(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "runs"
    shutil.copytree(runs / "sft_tiny", root / "sft_tiny")
    assert main(["eval", "--runs_dir", str(root), "--skip_base", "--skip_perplexity", *EVAL_FLAGS,
                 "--lm_eval_tasks", "gsm8k", "--lm_eval_limit", "1"]) == 2
    assert "lm-eval could not fetch a dataset for gsm8k" in capsys.readouterr().err
    assert read_json(root / "evaluation_results.json")["sft_tiny"]["preference_accuracy"] is not None


def test_report_charts_the_eval_generation_curves(tmp_path):
    """--eval_generation's metrics, logged beside eval_loss, get an overlaid chart each, with their direction."""
    from unitune.evaluate.charts import overlay_keys, run_histories

    run = tmp_path / "sft_x"
    run.mkdir()
    history = [{"step": 1, "loss": 1.0}, {"step": 1, "eval_loss": 0.9, "eval_task_accuracy": 0.25},
               {"step": 2, "eval_loss": 0.8, "eval_task_accuracy": 0.5, "eval_mean_reward": 0.1}]
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    runs = run_histories([("base", {}), ("sft_x", {"model_path": str(run)})])
    assert overlay_keys(runs) == [("loss", "training loss", "↓ lower is better"),
                                  ("eval_loss", "eval loss", "↓ lower is better"),
                                  ("eval_task_accuracy", "eval task accuracy", "↑ higher is better"),
                                  ("eval_mean_reward", "eval mean reward", "↑ higher is better")]


def test_a_qlora_run_is_scored_as_it_was_trained(tiny_args, tiny_model_dir, tokenizer, tmp_path):
    """A QLoRA run is scored on the 4-bit base it trained on, and the results say how. CPU: the adapter merged into
    the dequantised 4-bit base (what merge and export write); before, the evaluator merged it into the full-precision
    weights, another model. CUDA's form, the adapter unmerged on the 4-bit model in the training dtype, is checked
    here on the CPU: the scorer reproduces that model's own forward."""
    from peft import PeftModel

    from unitune.deploy.merge import merge_adapter
    from unitune.evaluate.scoring import token_weighted
    from unitune.train.trained import as_trained

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # weights far larger than the init's: the 4-bit rounding shows in the losses
        for module in base.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 0.3)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    run = tmp_path / "runs" / "sft_q"
    assert main(tiny_args("sft", "--use_qlora", "true", "--learning_rate", "5e-2", "--max_steps", "3",
                          "--model_name", str(tmp_path / "base"), "--output_dir", str(run))) == 0
    assert main(["eval", "--runs_dir", str(tmp_path / "runs"), "--skip_base", *EVAL_FLAGS]) == 0
    result = read_json(tmp_path / "runs" / "evaluation_results.json")["sft_q"]
    assert result["scored_as"] == "adapter merged into the dequantised 4-bit base, fp32"
    items = EvalData(str(DEMO_DIR), EvalConfig(max_samples=6)).sft
    quantized, original = (token_weighted(reply_nll(merge_adapter(run, base).model, tokenizer, items))
                           for base in ("quantized", "original"))
    assert result["test_loss"] == pytest.approx(quantized, abs=1e-6)
    assert abs(original - quantized) > 1e-2, (original, quantized)  # the old way scored another model

    model, scored_as = as_trained(run, str(tmp_path / "base"), "cpu", merge=False)
    dtype = read_json(run / "unitune_run.json")["hardware"]["dtype"].removeprefix("torch.")
    assert isinstance(model, PeftModel)
    assert scored_as == f"4-bit NF4 base ({dtype} compute) with the adapter, as trained"
    with torch.inference_mode():
        own = [model(input_ids=torch.tensor([enc["input_ids"]]),
                     labels=torch.where(torch.tensor([enc["assistant_masks"]]) == 1, torch.tensor([enc["input_ids"]]),
                                        -100)).loss.item() for enc in encode_pairs(tokenizer, items)]
    # Batched against one row at a time: in bf16 compute (a CPU with native bf16, or a GPU) the batch shape changes
    # the kernels' rounding: 5.6e-4 on a loss of 10.77 (5e-5 relative) on a Sapphire Rapids CPU.
    tolerance = {"rel": 1e-3} if dtype == "bfloat16" else {"abs": 1e-4}
    assert mean_loss(reply_nll(model, tokenizer, items)) == pytest.approx(own, **tolerance)


def test_a_run_that_cannot_be_scored_now_keeps_its_earlier_numbers(tmp_path):
    """Evaluating again a run that is training further (skipped) or that fails this time (the Hub unreachable)
    keeps its earlier numbers, with the reason; a new score replaces them."""
    from unitune.evaluate.run import save_results

    path = tmp_path / "evaluation_results.json"
    save_results(path, {"sft": {"test_loss": 1.5, "evaluated_at": "2026-12-01 10:00:00+00:00"}})
    merged = save_results(path, {"sft": {"skipped": "training now (pid 7)"}})
    assert merged["sft"]["test_loss"] == 1.5 and merged["sft"]["evaluated_at"] == "2026-12-01 10:00:00+00:00"
    assert merged["sft"]["not_reevaluated"].startswith("training now (pid 7) (")
    assert read_json(path) == merged
    merged = save_results(path, {"sft": {"test_loss": 1.2}})
    assert merged["sft"]["test_loss"] == 1.2 and "not_reevaluated" not in merged["sft"]
    merged = save_results(path, {"dpo": {"error": "cannot load"}})  # nothing earlier to keep: the error is the entry
    assert merged["dpo"]["error"] == "cannot load" and merged["sft"]["test_loss"] == 1.2
