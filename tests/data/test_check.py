"""`unitune check` and the dry run."""

import json

import pytest

from unitune.cli import main
from unitune.methods import METHODS
from unitune.data.demo_tasks import SPLIT_SIZES
from unitune.templates import chat_format

from conftest import save_tiny, with_template

ROWS = [{"messages": [{"role": "system", "content": "Reply in Chinese."}, {"role": "user", "content": "你好"},
                      {"role": "assistant", "content": "你好！有什么可以帮你的？"}, {"role": "user", "content": "谢谢"},
                      {"role": "assistant", "content": "不客气。"}]},
        {"prompt": [{"role": "user", "content": "2 + 2?"}], "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]}]


def check(capsys, *argv):
    code = main(["check", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_bundled_dataset_all_six_splits(capsys, tiny_model_dir):
    code, out, _ = check(capsys, "--model_name", str(tiny_model_dir), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["has_chat_template"] and report["masking"] == "turns" and report["end_of_turn"] == "<|im_end|>"
    assert report["stops_at_end_of_turn"] and not report["system_folded"]
    assert [s["split"] for s in report["splits"]] == list(SPLIT_SIZES)
    for split in report["splits"]:
        assert split["rows"] == SPLIT_SIZES[split["split"]]
        assert split["format"] == "preference"  # the most specific format; messages are there too
        assert split["feeds"] == [m for m, spec in METHODS.items() if "preference" in spec.formats]
        assert {"sft", "dpo", "orpo", "kto", "grpo"} <= set(split["feeds"])
        assert 30 < split["prompt_tokens"]["median"] < 80 and split["prompt_tokens"]["min"] <= split["prompt_tokens"]["max"]
        assert split["truncated"]["rows"] == 0 and split["empty_prompts"] == 0 and split["duplicates"] == 0
        assert split["chosen_equals_rejected"] == 0 and split["role_order"] == {}


def test_table_output(capsys, tiny_model_dir):
    code, out, _ = check(capsys, "--model_name", str(tiny_model_dir), "--split", "test_sft", "--max_length", "60")
    assert code == 0
    assert "test_sft" in out and "200  preference" in out and "rendered turn by turn, checked per row" in out
    assert "rows exceed --max_length 60" in out


def test_problems_are_reported(capsys, tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                          {"role": "assistant", "content": "c"}]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                          {"role": "user", "content": "z"}]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                          {"role": "user", "content": "z"}]}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = check(capsys, "--dataset", str(data), "--model_name", str(tiny_model_dir), "--json")
    split = json.loads(out)["splits"][0]
    assert split["format"] == "conversational" and split["feeds"] == [m for m, spec in METHODS.items()
                                                                        if "conversational" in spec.formats]
    assert {"sft", "grpo"} <= set(split["feeds"]) and "dpo" not in split["feeds"]
    assert split["duplicates"] == 1
    assert split["role_order"] == {"two user turns in a row": 1, "trailing user turn (nothing to learn)": 2}


def test_exit_status_when_method_cannot_be_fed(capsys, tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    code, out, _ = check(capsys, "--dataset", str(data), "--model_name", str(tiny_model_dir), "--method", "dpo")
    assert code == 1 and "cannot feed --method dpo (needs one of: prompt+chosen+rejected; chosen+rejected)" in out
    code, _, _ = check(capsys, "--dataset", str(data), "--model_name", str(tiny_model_dir), "--method", "sft")
    assert code == 0


def test_dry_run_plan(capsys, tiny_args):
    from unitune.models.hardware import choose_hardware

    assert main(tiny_args("dpo", "--dry-run", "--max_length", "70")) == 0
    out, err = capsys.readouterr()
    # fp32, or bf16 autocast on a CPU with native bf16 that measured it faster: the line says which, then why (the why
    # names the probe's file: "measured now" on a machine's first run, "cached" after)
    assert out.startswith(choose_hardware("auto").line().split(" (")[0] + " (")
    assert "plan: dpo on 8 rows of 'train_prefs', 2 optimizer steps" in out
    assert "tokens per epoch" in out and "dry run: nothing trained" in out
    assert "rows exceed --max_length 70 and will be truncated" in err


def test_every_prompt_too_long(capsys, tiny_args):
    assert main(tiny_args("sft", "--max_length", "40")) == 2
    assert "every row's prompt alone is at least --max_length 40 tokens" in capsys.readouterr().err


def test_truncation_counts_rows_not_replies(capsys, tiny_model_dir):
    code, out, _ = check(capsys, "--model_name", str(tiny_model_dir), "--split", "test_prefs", "--max_length", "64",
                         "--json")
    truncated = json.loads(out)["splits"][0]["truncated"]
    assert 0 < truncated["rows"] <= 200 and truncated["max_cut"] > 0


@pytest.mark.slow
def test_show_tokens_json_segments_rebuild_each_row(capsys, tokenizer, tmp_path):
    """--show_tokens with --json: segments concatenate to exactly the rendered row, multi-byte characters split
    by byte-level tokens included; the trained text is the replies and their end-of-turn tokens."""
    (tmp_path / "chat.jsonl").write_text(json.dumps(ROWS[0], ensure_ascii=False) + "\n")
    (tmp_path / "pairs.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    tok = with_template(tokenizer, "llama3")
    model = save_tiny(tmp_path / "model", "llama", tok)
    chat = chat_format(tok)
    for name, row in (("chat", ROWS[0]), ("pairs", ROWS[1])):
        code, out, _ = check(capsys, "--model_name", str(model), "--dataset", str(tmp_path / f"{name}.jsonl"),
                             "--show_tokens", "3", "--json")
        assert code == 0
        report = json.loads(out)
        assert report["masking"] == "trl" and report["end_of_turn"] == "<|eot_id|>"
        assert not report["stops_at_end_of_turn"]  # the tokenizer's EOS is <|im_end|>; the template ends on <|eot_id|>
        (view,) = report["splits"][0]["token_view"]
        conversation = row["messages"] if name == "chat" else row["prompt"] + row["chosen"]
        assert "".join(seg["text"] for seg in view) == chat.render(conversation)
        trained = [seg["text"] for seg in view if seg["trained"]]
        replies = [m["content"] for m in conversation if m["role"] == "assistant"]
        assert trained == [reply + "<|eot_id|>" for reply in replies]


def test_show_tokens_terminal_view_and_template_file(capsys, tmp_path, tiny_model_dir):
    """On a pipe the trained text is bracketed; --chat_template FILE replaces the tokenizer's template."""
    from conftest import _template_dir

    (tmp_path / "chat.jsonl").write_text(json.dumps(ROWS[0], ensure_ascii=False) + "\n")
    code, out, _ = check(capsys, "--model_name", str(tiny_model_dir), "--dataset", str(tmp_path / "chat.jsonl"),
                         "--show_tokens", "1", "--chat_template", str(_template_dir() / "qwen2_5_training.jinja"))
    assert code == 0
    assert "the template's {% generation %} markers" in out and "inside [[...]]" in out
    assert "<|im_start|>assistant\n[[你好！有什么可以帮你的？<|im_end|>]]" in out
    assert "[[不客气。<|im_end|>]]" in out and "[[Reply" not in out


def test_show_tokens_for_grpo_trains_nothing(capsys, tiny_model_dir, tmp_path):
    (tmp_path / "chat.jsonl").write_text(json.dumps(ROWS[0], ensure_ascii=False) + "\n")
    code, out, _ = check(capsys, "--model_name", str(tiny_model_dir), "--dataset", str(tmp_path / "chat.jsonl"),
                         "--show_tokens", "1", "--method", "grpo", "--json")
    (view,) = json.loads(out)["splits"][0]["token_view"]
    assert code == 0 and not any(seg["trained"] for seg in view)
    assert view[0]["text"].endswith("谢谢<|im_end|>\n<|im_start|>assistant\n")  # the generation prompt


def test_sample_measures_n_rows_and_counts_all(capsys, tmp_path, tiny_model_dir):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer number {i}, at some length."} for i in range(20)]
    rows.append({"prompt": "", "completion": "an unusable row"})
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    flags = ["--dataset", str(data), "--model_name", str(tiny_model_dir), "--max_length", "4"]
    code, out, _ = check(capsys, *flags, "--json", "--sample", "5")
    split = json.loads(out)["splits"][0]
    assert code == 0 and split["rows"] == 21 and split["sampled"] == 5
    assert sum(len(n) for n in split["bad_rows"].values()) == 1  # every row is still checked
    assert split["truncated"]["rows"] == 5  # every row is over --max_length 4: only the sample is measured
    code, out, _ = check(capsys, *flags, "--json")
    assert json.loads(out)["splits"][0]["truncated"]["rows"] == 20 and "sampled" not in json.loads(out)["splits"][0]
    code, out, _ = check(capsys, *flags, "--sample", "5")
    assert "measured on a random 5 of its 21 rows (--sample)" in out
