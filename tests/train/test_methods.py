"""DPO, ORPO, KTO, GRPO and RLOO: two steps each on the tiny model, data formats, rewards."""

import json
import re

import pytest

from unitune.cli import main, parse_config
from unitune.config import TrainConfig
from unitune.data.load import DEMO_DIR
from unitune.data.pipeline import prepare
from unitune.methods import METHODS
from unitune.models.hardware import choose_hardware
from unitune.train.methods import trainer_module
from unitune.train.run import data_settings, training_args

from conftest import SEED_FILES, built_trainer, lora_b_norm, read_json, seed_snippet_generates

USER = {"role": "user", "content": "What is 2 + 2? End with a line of the form 'Answer: <value>'."}
GOOD = {"role": "assistant", "content": "2 + 2 = 4.\nAnswer: 4"}
BAD = {"role": "assistant", "content": "I think it is five."}
FORMATS = {  # every accepted preference format, as a one-row file
    "explicit_conversational": {"prompt": USER["content"], "chosen": [USER, GOOD], "rejected": [USER, BAD]},
    "explicit_prompt_messages": {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]},
    "implicit": {"chosen": [USER, GOOD], "rejected": [USER, BAD]},
    "plain_text": {"prompt": USER["content"], "chosen": GOOD["content"], "rejected": BAD["content"]},
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_preference_method_two_steps(method, tiny_args, tmp_path):
    assert main(tiny_args(method)) == 0
    out = tmp_path / f"{method}_run"
    for name in SEED_FILES:
        assert (out / name).exists(), name
    assert lora_b_norm(out) > 0
    run = read_json(out / "unitune_run.json")
    assert run["method"] == method and run["train_split"] == "train_prefs"
    assert read_json(out / "trainer_state.json")["global_step"] == 2
    seed_snippet_generates(out, max_new_tokens=4)  # the run loads on its base with plain PEFT and generates


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_preference_formats(method, fmt, tiny_args, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [FORMATS[fmt]] * 4)
    assert main(tiny_args(method, "--dataset", data, "--max_steps", "1")) == 0
    assert lora_b_norm(tmp_path / f"{method}_run") > 0  # the pairs reached the trainer and moved the adapter


def test_kto_unpaired_input_used_as_is(tiny_args, tmp_path):
    rows = [{"prompt": "Hi", "completion": "Hello!", "label": True}, {"prompt": "Hi", "completion": "Go.", "label": False},
            {"prompt": "Yo", "completion": "Hey!", "label": True}]
    assert main(tiny_args("kto", "--dataset", write_jsonl(tmp_path / "u.jsonl", rows), "--max_steps", "1")) == 0
    assert read_json(tmp_path / "kto_run" / "unitune_run.json")["train_rows"] == 3


def test_kto_imbalanced_weights():
    from unitune.train.methods.kto import class_weights

    assert class_weights([True, False])[:2] == (1.0, 1.0)
    desirable, undesirable, why = class_weights([True] * 1 + [False] * 4)
    assert (desirable, undesirable) == (4.0, 1.0) and "balances" in why


def test_kto_labels_must_be_booleans(tiny_args, tmp_path, capsys):
    rows = [{"prompt": "Hi", "completion": "Hello!", "label": 1}]
    assert main(tiny_args("kto", "--dataset", write_jsonl(tmp_path / "u.jsonl", rows))) == 2
    assert "column 'label' is int (1), KTO needs booleans" in capsys.readouterr().err


@pytest.mark.slow
def test_dpo_holds_no_reference_copy(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = parse_config(TrainConfig, ["--method", "dpo", "--model_name", str(tiny_model_dir)], "t")
    settings = data_settings(cfg, 4, "max_train_samples")
    ds = prepare(str(DEMO_DIR), "train_prefs", METHODS["dpo"], settings, tokenizer).converted
    trainer = trainer_module("dpo").build(cfg, AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer,
                                          ds, None, training_args(cfg, choose_hardware("auto"), tmp_path, False))
    assert trainer.ref_model is None  # the reference is the base with the adapter disabled
    assert hasattr(trainer.model, "disable_adapter")


def test_identical_pairs_dropped_or_refused(tiny_args, tmp_path, capsys):
    same = {"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}
    data = write_jsonl(tmp_path / "d.jsonl", [same, FORMATS["plain_text"]])
    assert main(tiny_args("dpo", "--dataset", data, "--max_steps", "1")) == 0
    assert "dropping 1 pair(s) whose chosen reply equals the rejected one" in capsys.readouterr().err
    data = write_jsonl(tmp_path / "e.jsonl", [same])
    assert main(tiny_args("dpo", "--dataset", data, "--output_dir", str(tmp_path / "x"))) == 2
    assert "every pair has chosen equal to rejected" in capsys.readouterr().err


@pytest.mark.parametrize("rows,message", [
    ([{"prompt": "", "chosen": "a", "rejected": "b"}], "no usable rows in split 'train': 1 empty prompt (row 0)"),
    ([{"prompt": "p", "chosen": 3, "rejected": "b"}], "no usable rows in split 'train': 1 non-string content (row 0)"),
    ([{"question": "p", "answer": "b"}], "found columns [question, answer], need one of (preference: "
                                         "prompt+chosen+rejected; alpaca_preference: instruction+chosen+rejected; "
                                         "preference_implicit: chosen+rejected); map your columns with --columns"),
])
def test_preference_bad_input(rows, message, tiny_args, tmp_path, capsys):
    assert main(tiny_args("dpo", "--dataset", write_jsonl(tmp_path / "d.jsonl", rows))) == 2
    assert message in capsys.readouterr().err


REWARD_FILE = '''
calls = []

def brevity(prompts, completions, answer, **kwargs):
    calls.append(len(completions))
    return [100.0 / (1 + len(c[0]["content"])) for c in completions]

def broken(prompts, completions, **kwargs):
    raise ValueError("boom")

def wrong_count(prompts, completions, **kwargs):
    return [0.0]
'''


def test_grpo_with_user_reward_file(tiny_args, tmp_path):
    reward = tmp_path / "my_rewards.py"
    reward.write_text(REWARD_FILE)
    args = tiny_args("grpo", "--reward_funcs", f"{reward}:brevity", "accuracy", "--reward_weights", "1", "2",
                     "--max_completion_length", "8", "--num_generations", "2")
    assert main(args) == 0
    out = tmp_path / "grpo_run"
    logs = read_json(out / "trainer_state.json")["log_history"]
    steps = [e for e in logs if "reward" in e]
    assert len(steps) == 2 and all(e["rewards/brevity/mean"] > 0 and "reward_std" in e for e in steps)
    assert all("rewards/accuracy/mean" in e for e in steps)
    samples = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert samples and set(samples[0]["rewards"]) == {"brevity", "accuracy"}
    assert samples[0]["rewards"]["brevity"] == pytest.approx(100 / (1 + len(samples[0]["completion"])))
    assert lora_b_norm(out) > 0  # non-constant rewards give advantages, so the adapter moved


def test_grpo_default_rewards_logged(tiny_args, tmp_path, capsys):
    assert main(tiny_args("grpo", "--max_steps", "1", "--max_completion_length", "4", "--num_generations", "2")) == 0
    assert "GRPO rewards: accuracy, format (the data have an 'answer' column)" in capsys.readouterr().out
    logs = read_json(tmp_path / "grpo_run" / "trainer_state.json")["log_history"]
    assert "rewards/accuracy/mean" in logs[0] and "rewards/format/mean" in logs[0]


@pytest.mark.parametrize("loss,level", [("dr_grpo", "token"), ("luspo", "sequence")])
def test_grpo_loss_variants_reach_the_trainer_and_the_report(loss, level, tiny_args, tiny_model_dir, tmp_path):
    """--loss_type and --importance_sampling_level (GSPO) are the ones TRL's trainer computes its loss with, and the
    report names them."""
    from unitune.evaluate.report import loss_row

    flags = ["--max_steps", "1", "--max_completion_length", "4", "--num_generations", "2", "--loss_type", loss,
             "--importance_sampling_level", level]
    trainer = built_trainer(tiny_args("grpo", *flags), tmp_path)
    assert (trainer.loss_type, trainer.importance_sampling_level) == (loss, level)
    assert main(tiny_args("grpo", *flags)) == 0
    record = read_json(tmp_path / "grpo_run" / "unitune_run.json")
    assert loss_row("grpo", record["settings"]) == {"loss / importance sampling": f"{loss} / {level}"}


def test_rloo_trains_on_grpo_rewards(tiny_args, tiny_model_dir, tmp_path, capsys):
    """RLOO is TRL's RLOOTrainer with GRPO's rewards, reward weights, sampling flags and completions file; its
    --beta is TRL's KL weight (0.05 by default)."""
    import trl

    reward = tmp_path / "my_rewards.py"
    reward.write_text(REWARD_FILE)
    flags = ["--max_completion_length", "8", "--num_generations", "2", "--reward_funcs", "accuracy",
             f"{reward}:brevity", "--reward_weights", "1", "0.5", "--temperature", "0.7"]
    trainer = built_trainer(tiny_args("rloo", *flags), tmp_path)
    assert isinstance(trainer, trl.RLOOTrainer)
    assert (trainer.beta, trainer.num_generations, trainer.temperature) == (0.05, 2, 0.7)
    assert trainer.reward_weights.tolist() == [1.0, 0.5]
    assert main(tiny_args("rloo", *flags)) == 0
    assert "RLOO rewards: accuracy, " in capsys.readouterr().out
    out = tmp_path / "rloo_run"
    logs = read_json(out / "trainer_state.json")["log_history"]
    assert "rewards/accuracy/mean" in logs[0] and "rewards/brevity/mean" in logs[0]
    assert read_json(out / "unitune_run.json")["settings"]["method"] == "rloo"
    samples = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert samples and set(samples[0]["rewards"]) == {"accuracy", "brevity"}
    assert lora_b_norm(out) > 0  # the completions' rewards differ from their leave-one-out baselines


@pytest.mark.parametrize("flag", [["--loss_type", "dapo"], ["--importance_sampling_level", "sequence"]])
def test_rloo_refuses_grpo_losses(flag, tiny_args, capsys):
    assert main(tiny_args("rloo", *flag)) == 2
    assert f"{flag[0]}" in capsys.readouterr().err


def test_grpo_loss_errors_are_one_line(tiny_args, capsys):
    assert main(tiny_args("grpo", "--loss_type", "ppo")) == 2
    assert "unknown --loss_type for grpo 'ppo'" in capsys.readouterr().err
    assert main(tiny_args("grpo", "--loss_type", "luspo")) == 2
    assert "luspo is a sequence-level loss: add --importance_sampling_level sequence" in capsys.readouterr().err


@pytest.mark.parametrize("spec,message", [
    ("nope.py:f", "reward file not found: nope.py"),
    ("{file}:missing", "no function 'missing' in"),
    ("{file}:broken", "reward function 'broken' raised ValueError: boom on row 0"),
    ("{file}:wrong_count", "reward function 'wrong_count' returned 1 values for 2 completions"),
    ("unknownname", "unknown reward 'unknownname'"),
])
def test_grpo_reward_errors(spec, message, tiny_args, tmp_path, capsys):
    reward = tmp_path / "my_rewards.py"
    reward.write_text(REWARD_FILE)
    args = tiny_args("grpo", "--reward_funcs", spec.format(file=reward), "--max_completion_length", "4",
                     "--num_generations", "2", "--max_steps", "1")
    assert main(args) == 2
    assert message in capsys.readouterr().err
    record = read_json(tmp_path / "grpo_run" / "unitune_run.json")  # the run says it failed, and why
    assert record["status"] == "failed" and message in record["error"]


def test_grpo_module_reward(tiny_args, tmp_path, capsys):
    args = tiny_args("grpo", "--reward_funcs", "unitune.train.rewards:length", "--max_completion_length", "4",
                     "--num_generations", "2", "--max_steps", "1")
    assert main(args) == 0
    assert "GRPO rewards: unitune.train.rewards:length (from --reward_funcs)" in capsys.readouterr().out
    assert "rewards/length/mean" in read_json(tmp_path / "grpo_run" / "trainer_state.json")["log_history"][0]


def test_grpo_reward_model_is_weighted_with_the_functions(tiny_args, tiny_model_dir, tmp_path, capsys):
    """--reward_weights counts the reward model: one weight per function, then one for the model."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    scorer = tmp_path / "scorer"
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(scorer)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(scorer)
    base = tiny_args("grpo", "--reward_funcs", "length", "--reward_model", str(scorer), "--max_steps", "1",
                     "--max_completion_length", "4", "--num_generations", "2")
    assert main(base + ["--reward_weights", "1"]) == 2
    assert "--reward_weights has 1 values for 2 rewards (1 --reward_funcs plus --reward_model)" in \
        capsys.readouterr().err
    assert main(base + ["--reward_weights", "0.5", "2"]) == 0
    logs = read_json(tmp_path / "grpo_run" / "trainer_state.json")["log_history"]
    assert "rewards/length/mean" in logs[0] and any(k.startswith("rewards/scorer") for k in logs[0]), logs[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("steps", [["--max_steps", "2"], ["--num_train_epochs", "1.5"]], ids=["max_steps", "epochs"])
def test_plan_line_matches_the_steps_taken(method, steps, tiny_model_dir, tmp_path, capsys):
    """The plan's optimizer steps are the trainer's: KTO's pairs count twice, GRPO's batch counts completions."""
    out = tmp_path / "run"
    extra = ["--max_completion_length", "4", "--num_generations", "2"] if METHODS[method].samples_completions else []
    extra += ["--max_completion_length", "4", "--teacher", str(tiny_model_dir)] if METHODS[method].teacher else []
    assert main(["train", "--method", method, "--model_name", str(tiny_model_dir), "--output_dir", str(out),
                 "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                 "--max_train_samples", "8", *steps, *extra]) == 0
    planned = re.search(r"plan: .*?, (\d+) optimizer (step|steps) \(", capsys.readouterr().out)
    assert planned and (planned.group(2) == "step") == (planned.group(1) == "1")
    assert int(planned.group(1)) == read_json(out / "trainer_state.json")["global_step"]


def test_grpo_num_generations_must_divide(tiny_args, capsys):
    assert main(tiny_args("grpo", "--num_generations", "3")) == 2
    assert "--num_generations 3 does not divide the generation batch of 2 prompts" in capsys.readouterr().err


def test_grpo_needs_a_reward(tiny_args, tmp_path, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi"}] * 4)
    assert main(tiny_args("grpo", "--dataset", data, "--num_generations", "2")) == 2
    assert "no reward for GRPO/RLOO" in capsys.readouterr().err


def test_rewards_builtins():
    from unitune.train.rewards import accuracy, format, length, reference

    completions = [[{"role": "assistant", "content": "2 + 2 = 4.\nAnswer: 4"}], [{"role": "assistant", "content": "4"}]]
    assert accuracy(None, completions, answer=["4", "4"], answer_format="tagged") == [1.0, 0.0]
    assert accuracy(None, completions, answer=["4", "4"]) == [1.0, 1.0]  # auto: a bare reply's last number
    assert format(None, completions) == [1.0, 0.0]
    assert format(None, ["Answer: 4\nbecause 2 + 2 = 4", "Answer: 4\nAnswer: 4"]) == [0.5, 0.5]
    assert length(None, ["word " * 10, "word " * 80]) == [0.0, -1.0]
    chosen = [[USER, GOOD]] * 2
    scores = reference(None, completions, chosen=chosen)
    assert scores[0] == 1.0 and 0 < scores[1] < 1


def test_grpo_reads_gsm8k_answers(tiny_args, tmp_path, capsys):
    """GSM8K-style data: the accuracy reward reads '#### <value>', and the run says so before training."""
    rows = [{"prompt": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
            for i in range(8)]
    data = write_jsonl(tmp_path / "gsm.jsonl", rows)
    assert main(tiny_args("grpo", "--dataset", data, "--num_generations", "2", "--max_completion_length", "4",
                          "--max_steps", "1")) == 0
    out = capsys.readouterr().out
    assert "GRPO rewards: accuracy, format (the data have an 'answer' column)" in out
    assert "answers checked as gsm8k (8 of 8 answers are written that way)" in out
    assert main(tiny_args("grpo", "--answer_format", "boxd")) == 2
    assert "unknown --answer_format 'boxd' (did you mean 'boxed'?)" in capsys.readouterr().err


def test_tensorboard_gets_the_training_logs(tiny_args, tmp_path):
    """--report_to tensorboard writes event files with train/loss, offline, under the run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(tiny_args("sft", "--report_to", "tensorboard", "--run_name", "tb-check")) == 0
    events = list((tmp_path / "sft_run").glob("runs/*/events.out.tfevents.*"))
    assert events, sorted(p.name for p in (tmp_path / "sft_run").rglob("*"))
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert len(accumulator.Scalars("train/loss")) == 2
    assert read_json(tmp_path / "sft_run" / "unitune_run.json")["settings"]["run_name"] == "tb-check"


@pytest.mark.parametrize("flags,message", [
    (["--report_to", "tensorbord"], "unknown tracker 'tensorbord' in --report_to (did you mean 'tensorboard'?)"),
    (["--report_to", "none", "wandb"], "--report_to none wandb mixes 'none' with trackers"),
    (["--report_to", "mlflow"], "--report_to mlflow needs the mlflow package, which is not installed; run "
                                "`pip install mlflow`"),
])
def test_tracker_problems_are_one_line_before_loading(tiny_args, capsys, flags, message):
    assert main(tiny_args("sft", *flags)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_wandb_without_a_login_is_one_line(monkeypatch, tmp_path):
    from unitune.config import trackers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not trackers.wandb_ready()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / "netrc").chmod(0o600)
    assert trackers.wandb_ready()
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert trackers.wandb_ready()


def test_eval_generation_logs_task_accuracy_at_each_evaluation(tiny_args, tmp_path, monkeypatch):
    """--eval_generation: greedy replies to held-out prompts, scored at every evaluation, logged with its step
    (and the final evaluation is not repeated when the last step had one)."""
    from datasets import load_dataset

    from unitune.train import generation_eval

    answers = {row["prompt"]: row["answer"] for row in load_dataset(str(DEMO_DIR), split="test_gen")}
    calls = []

    def replies(model, tokenizer, prompts, *args, **kwargs):  # right on the first evaluation, wrong after
        calls.append(len(prompts))
        right = len(calls) == 1
        return [f"Answer: {answers[p[-1]['content']] if right else 'nothing'}" for p in prompts]

    monkeypatch.setattr(generation_eval, "generate_replies", replies)
    assert main(tiny_args("sft", "--eval_split", "test_gen", "--eval_steps", "1", "--max_eval_samples", "4",
                          "--eval_generation", "3")) == 0
    history = read_json(tmp_path / "sft_run" / "trainer_state.json")["log_history"]
    assert [e["step"] for e in history if "eval_loss" in e] == [1, 2]
    assert [(e["step"], e["eval_task_accuracy"]) for e in history if "eval_task_accuracy" in e] == [(1, 1.0), (2, 0.0)]
    assert calls == [3, 3]


def test_eval_generation_for_grpo_logs_the_weighted_mean_reward(tiny_args, tmp_path):
    """eval_mean_reward sums the run's reward functions with its --reward_weights (each function here gives a
    constant, so the mean is known: 0.5 x 2 + 3 x 1 = 4)."""
    code = tmp_path / "constant.py"
    code.write_text("def two(prompts, completions, **_):\n    return [2.0] * len(completions)\n\n\n"
                    "def one(prompts, completions, **_):\n    return [1.0] * len(completions)\n")
    assert main(tiny_args("grpo", "--eval_split", "test_gen", "--eval_steps", "1", "--max_eval_samples", "2",
                          "--eval_generation", "2", "--num_generations", "2", "--max_completion_length", "4",
                          "--max_steps", "1", "--reward_funcs", f"{code}:two", f"{code}:one",
                          "--reward_weights", "0.5", "3")) == 0
    evals = [e for e in read_json(tmp_path / "grpo_run" / "trainer_state.json")["log_history"]
             if "eval_mean_reward" in e]
    assert [(e["step"], e["eval_mean_reward"]) for e in evals] == [(1, 4.0)]
    assert 0.0 <= evals[0]["eval_task_accuracy"] <= 1.0


def test_eval_generation_needs_an_eval_split_and_answers(tiny_args, tmp_path, capsys):
    assert main(tiny_args("sft", "--eval_generation", "4")) == 2
    assert "--eval_generation 4 needs --eval_split" in capsys.readouterr().err
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "Say hi", "completion": "Hi"}] * 4)
    assert main(tiny_args("sft", "--dataset", data, "--eval_split", "train", "--eval_generation", "2",
                          "--dry-run")) == 2
    assert "--eval_generation scores replies against an 'answer' column" in capsys.readouterr().err


def test_trackio_keeps_the_training_logs_offline(tiny_args, tmp_path, monkeypatch):
    """--report_to trackio: a local Trackio store (TRACKIO_DIR) holds the run, named by --run_name, with its loss."""
    import uuid

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is first imported
    from trackio.sqlite_storage import SQLiteStorage

    name = f"tk-{uuid.uuid4().hex[:8]}"  # unique, should an earlier import have fixed the default store
    assert main(tiny_args("sft", "--report_to", "trackio", "--run_name", name)) == 0
    logs = SQLiteStorage.get_logs("huggingface", name)
    assert [round(entry["train/loss"], 4) for entry in logs if "train/loss" in entry] == \
        [round(e["loss"], 4) for e in read_json(tmp_path / "sft_run" / "trainer_state.json")["log_history"]
         if "loss" in e]
