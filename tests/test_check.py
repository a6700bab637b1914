"""`unitune check` and the dry run."""

import json

from unitune.cli import main
from unitune.tasks import SPLIT_SIZES


def check(capsys, *argv):
    code = main(["check", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bundled_dataset_all_six_splits(capsys, tiny_model_dir):
    code, out, _ = check(capsys, "--model_name", str(tiny_model_dir), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["has_chat_template"] and not report["marks_assistant_spans"]
    assert [s["split"] for s in report["splits"]] == list(SPLIT_SIZES)
    for split in report["splits"]:
        assert split["rows"] == SPLIT_SIZES[split["split"]]
        assert split["format"] == "preference"  # the most specific format; messages are there too
        assert split["feeds"] == ["sft", "dpo", "orpo", "kto", "grpo"]
        assert 30 < split["prompt_tokens"]["median"] < 80 and split["prompt_tokens"]["min"] <= split["prompt_tokens"]["max"]
        assert split["truncated"]["rows"] == 0 and split["empty_prompts"] == 0 and split["duplicates"] == 0
        assert split["chosen_equals_rejected"] == 0 and split["role_order"] == {}


def test_table_output(capsys, tiny_model_dir):
    code, out, _ = check(capsys, "--model_name", str(tiny_model_dir), "--split", "test_sft", "--max_length", "60")
    assert code == 0
    assert "test_sft" in out and "200  preference" in out and "no assistant markers" in out
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
    assert split["format"] == "conversational" and split["feeds"] == ["sft", "grpo"]
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
    assert main(tiny_args("dpo", "--dry-run", "--max_length", "70")) == 0
    out, err = capsys.readouterr()
    assert "device=cpu dtype=float32" in out and "plan: dpo on 8 rows of 'train_prefs', 2 optimizer steps" in out
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
