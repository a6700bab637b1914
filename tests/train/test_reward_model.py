"""--method rm: a reward model trained on preference pairs, loaded back with transformers + PEFT, scored by the
evaluator, used by GRPO and RLOO as --reward_model, merged into a standalone classifier, refused by chat and
export."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification

from unitune.cli import main, parse_config
from unitune.config import TrainConfig
from unitune.data.load import DEMO_DIR
from unitune.data.pipeline import prepare
from unitune.data.views import pair_row
from unitune.evaluate.rewarded import reward_model_scores
from unitune.methods import METHODS
from unitune.models.load import load_tokenizer
from unitune.train.run import data_settings
from unitune.train.trained import reward_classifier

from conftest import built_trainer, read_json

PROMPT = [{"role": "user", "content": "What is 2 + 2? End with a line of the form 'Answer: <value>'."}]
REPLIES = ["2 + 2 = 4.\nAnswer: 4", "I think it is five."]


def bundled_pairs(split: str, rows: int) -> list[tuple]:
    """(prompt messages, chosen messages, rejected messages) of the bundled pairs' first rows."""
    prepared = prepare(str(DEMO_DIR), split, METHODS["dpo"], data_settings(
        parse_config(TrainConfig, ["--method", "dpo"], "t"), rows, "max_train_samples"))
    return [tuple(pair_row(row, prepared.format).values()) for row in prepared.rows]


@pytest.fixture
def rm_run(tiny_args, tmp_path):
    assert main(tiny_args("rm", "--max_steps", "3")) == 0
    return tmp_path / "rm_run"


def scores_of(model, tokenizer, texts):
    with torch.inference_mode():
        batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
        return model(**batch).logits[:, 0].tolist()


def test_rm_run_loads_with_transformers_and_peft(rm_run, tiny_model_dir):
    """The run folder is a PEFT adapter on a sequence classifier, its trained score head inside; unitune's own
    loader (adapter and head merged) scores as that model does."""
    config = read_json(rm_run / "adapter_config.json")
    assert config["task_type"] == "SEQ_CLS"
    with safe_open(rm_run / "adapter_model.safetensors", "pt") as saved:
        assert any(key.endswith("score.weight") for key in saved.keys())
    logs = read_json(rm_run / "trainer_state.json")["log_history"]
    assert "accuracy" in logs[0] and "margin" in logs[0]  # TRL's reward metrics, per step
    tokenizer = load_tokenizer(str(rm_run))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id
    peft = PeftModel.from_pretrained(base, str(rm_run)).eval()
    texts = [tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": r}], tokenize=False)
             for r in REPLIES]
    merged, merged_tokenizer = reward_classifier(str(rm_run))
    theirs, ours = scores_of(peft, tokenizer, texts), scores_of(merged, merged_tokenizer, texts)
    assert ours == pytest.approx(theirs, abs=1e-5)
    untrained = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    untrained.config.pad_token_id = tokenizer.pad_token_id
    assert ours != pytest.approx(scores_of(untrained, tokenizer, texts), abs=1e-3)  # the head was trained


def test_rm_trains_on_the_text_its_scorers_read(tiny_args, tiny_model_dir, tmp_path):
    """The reward is read at the last token that is not padding, so the RM must train on the tokens GRPO's reward
    models and the evaluator score: the whole conversation through the chat template."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)  # as train_and_save
    trainer = built_trainer(tiny_args("rm"), tmp_path, model)
    pairs = bundled_pairs("train_prefs", 4)
    assert len(trainer.train_dataset) == len(pairs) == 4
    for (prompt, chosen, rejected), prepared in zip(pairs, trainer.train_dataset):
        for side, reply in (("chosen", chosen), ("rejected", rejected)):
            scored = tokenizer.apply_chat_template(prompt + reply, tokenize=False)  # as reward_model_scores
            assert prepared[f"{side}_ids"] == tokenizer(scored, add_special_tokens=False)["input_ids"]


def test_grpo_and_rloo_take_an_rm_run_as_their_reward_model(rm_run, tiny_args, tiny_model_dir, tmp_path, capsys):
    """The trainers score completions with the RM as it trained (its adapter and head), through its own tokenizer."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    texts = [tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": r}], tokenize=False)
             for r in REPLIES]
    expected = scores_of(*reward_classifier(str(rm_run)), texts)
    for method in ("grpo", "rloo"):
        flags = ["--reward_model", str(rm_run), "--max_steps", "1", "--num_generations", "2",
                 "--max_completion_length", "4"]
        trainer = built_trainer(tiny_args(method, *flags), tmp_path)
        assert len(trainer.reward_funcs) == 1
        # under bf16 autocast when the run computes in bf16 (accelerate wraps the reward model's forward with it)
        tolerance = {"abs": 2e-2} if trainer.args.bf16 else {"abs": 1e-5}
        assert scores_of(trainer.reward_funcs[0].cpu(), trainer.reward_processing_classes[0], texts) == \
            pytest.approx(expected, **tolerance)
        assert main(tiny_args(method, *flags)) == 0
        assert f"rewards: reward model {rm_run}" in capsys.readouterr().out
        logs = read_json(tmp_path / f"{method}_run" / "trainer_state.json")["log_history"]
        assert "rewards/rm_run/mean" in logs[0]
    dpo = tmp_path / "dpo_run"
    assert main(tiny_args("dpo", "--max_steps", "1")) == 0
    assert main(tiny_args("grpo", "--reward_model", str(dpo), "--num_generations", "2", "--overwrite_output_dir")) == 2
    assert f"--reward_model {dpo} is a dpo run, not a reward model; train one with --method rm" in \
        capsys.readouterr().err


def test_eval_scores_rm_runs_on_the_test_pairs(rm_run, tmp_path, capsys):
    """reward_accuracy: the chosen reply scored above the rejected one; reward_margin: their mean difference; the
    report's table gains both columns, each with its direction. --reward_model scores every other entry's replies."""
    assert main(["eval", "--runs_dir", str(tmp_path), "--max_samples", "6", "--batch_size", "4",
                 "--max_new_tokens", "4", "--reward_model", str(rm_run)]) == 0
    results = read_json(tmp_path / "evaluation_results.json")
    rm = results["rm_run"]
    assert rm["method"] == "rm" and rm["reward_pairs"] == 6 and rm.get("test_loss") is None
    pairs = bundled_pairs("test_prefs", 6)
    prompts = [p for p, _, _ in pairs]
    chosen = reward_model_scores(str(rm_run), prompts, [c for _, c, _ in pairs])
    rejected = reward_model_scores(str(rm_run), prompts, [r for _, _, r in pairs])
    assert rm["reward_accuracy"] == sum(c > r for c, r in zip(chosen, rejected)) / 6
    assert rm["reward_margin"] == pytest.approx(sum(c - r for c, r in zip(chosen, rejected)) / 6, abs=1e-5)
    assert results["base"]["mean_reward_funcs"] == f"reward model {rm_run} (--reward_model)"
    assert isinstance(results["base"]["mean_reward"], float)
    report = (tmp_path / "report.md").read_text()
    assert "| mean_reward | reward_accuracy | reward_margin |" in report
    assert "reward_accuracy ↑" in (tmp_path / "report.html").read_text()


def test_merge_writes_a_standalone_classifier_and_chat_and_export_refuse(rm_run, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge", "--run", str(rm_run), "--output", str(out)]) == 0
    standalone = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = load_tokenizer(str(out))
    assert standalone.config.pad_token_id == tokenizer.pad_token_id
    texts = [tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": r}], tokenize=False)
             for r in REPLIES]
    merged, _ = reward_classifier(str(rm_run))
    assert scores_of(standalone, tokenizer, texts) == pytest.approx(scores_of(merged, tokenizer, texts), abs=1e-5)
    capsys.readouterr()
    assert main(["chat", "--run", str(rm_run)]) == 2
    assert "is a reward model (--method rm): it scores replies and writes none, so it cannot chat" in \
        capsys.readouterr().err
    assert main(["export", "--run", str(rm_run), "--output", str(tmp_path / "gguf")]) == 2
    assert "so it cannot be exported to GGUF" in capsys.readouterr().err
    assert not (tmp_path / "gguf").exists()


def test_reward_model_bad_input_is_one_line(rm_run, tiny_args, tmp_path, capsys):
    assert main(tiny_args("rm", "--eval_split", "test_prefs", "--eval_generation", "2")) == 2
    assert "--method rm trains a reward model, which writes none; drop --eval_generation" in capsys.readouterr().err
    long = tmp_path / "long.jsonl"  # short prompts, replies of 200 words
    long.write_text("".join(json.dumps({"prompt": f"Say {i}.", "chosen": "yes " * 200, "rejected": "no " * 200}) + "\n"
                            for i in range(4)))
    assert main(tiny_args("rm", "--dataset", str(long), "--max_length", "64", "--output_dir", str(tmp_path / "x"))) == 2
    assert "every pair is longer than --max_length 64, and the reward trainer drops such pairs; raise --max_length" \
        in capsys.readouterr().err
    missing = tmp_path / "no_such_model"
    assert main(["eval", "--runs_dir", str(tmp_path), "--reward_model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err and "generating" not in err  # before any entry generates


@pytest.mark.parametrize("template", [None, "llama3.jinja"])
def test_show_tokens_marks_the_whole_scored_conversation(template, tokenizer, capsys):
    """`check --method rm --show_tokens`: the RM trains on all of prompt + chosen, so all of it is marked trained."""
    from pathlib import Path

    import trl

    flags = ["--chat_template", str(Path(trl.__file__).parent / "chat_templates" / template)] if template else []
    assert main(["check", "--method", "rm", "--split", "train_prefs", "--show_tokens", "1", "--json", *flags]) == 0
    view = json.loads(capsys.readouterr().out)["splits"][0]["token_view"][0]
    assert len(view) == 1 and view[0]["trained"]
    prompt, chosen, _ = bundled_pairs("train_prefs", 1)[0]
    if template is None:
        assert view[0]["text"] == tokenizer.apply_chat_template(prompt + chosen, tokenize=False)
    assert view[0]["text"].rstrip().endswith("Answer: 105" + ("<|eot_id|>" if template else "<|im_end|>"))


def test_an_rm_trained_again_in_place_is_scored_as_it_is_now(rm_run, tiny_args):
    """The evaluator keeps a loaded reward model while its files stay the same; a run trained again in the same
    folder (as the web UI may, in one process) is loaded again."""
    before = reward_model_scores(str(rm_run), [PROMPT], [REPLIES[0]])
    assert main(tiny_args("rm", "--max_steps", "3", "--seed", "7", "--overwrite_output_dir")) == 0
    after = reward_model_scores(str(rm_run), [PROMPT], [REPLIES[0]])
    model, tokenizer = reward_classifier(str(rm_run))
    text = tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": REPLIES[0]}], tokenize=False)
    assert after == pytest.approx(scores_of(model, tokenizer, [text]), abs=1e-5)
    assert after != pytest.approx(before, abs=1e-4)
