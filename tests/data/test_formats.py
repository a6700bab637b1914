"""The data people have: Alpaca, ShareGPT, HH-RLHF text pairs, mapped columns, broken rows (hand-made rows)."""

import json
import re
from pathlib import Path

import pytest

from unitune.cli import main
from unitune.data.canonical import canonical
from unitune.data.formats import detect_format
from unitune.data.rows import bad_rows
from unitune.data.views import row_views
from unitune.templates import chat_format

from conftest import read_json

DATA_DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
ALPACA = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "system": None, "history": []},
          {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be brief.",
           "history": [["Who are you?", "A helper."]]}]
SHAREGPT = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Bye"},
                               {"from": "gpt", "value": "Bye!"}]}]
HH = [{"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: Sure?\n\nAssistant: Yes, 4.",
       "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: Sure?\n\nAssistant: No idea."}]
GRPO = ["--max_completion_length", "4", "--num_generations", "2", "--reward_funcs", "length"]


def write(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def convert(rows):
    from datasets import Dataset

    ds = Dataset.from_list(rows)
    return canonical(ds, detect_format(ds.column_names))


def test_alpaca_becomes_a_conversation():
    ds, fmt = convert(ALPACA)
    assert fmt == "conversational"
    assert ds[0]["messages"] == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                 {"role": "assistant", "content": "5"}]
    assert ds[1]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"},
                                 {"role": "assistant", "content": "A helper."}, {"role": "user", "content": "Say hi."},
                                 {"role": "assistant", "content": "Hi!"}]


def test_alpaca_pairs_feed_preference_methods():
    ds, fmt = convert([{"instruction": "Add.", "input": "2 and 3", "chosen": "5", "rejected": "6"}])
    assert fmt == "preference"
    prompt, (chosen, rejected) = row_views(ds[0], fmt)
    assert prompt == [{"role": "user", "content": "Add.\n\n2 and 3"}] and chosen[0]["content"] == "5"


def test_sharegpt_roles_mapped_and_openai_style_accepted():
    ds, fmt = convert(SHAREGPT)
    assert fmt == "conversational"
    assert [m["role"] for m in ds[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    openai = [{"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    assert convert(openai)[0][0]["messages"][1] == {"role": "assistant", "content": "Yo"}
    messages_key = [{"messages": [{"from": "human", "value": "Hi"}, {"from": "model", "value": "Yo"}]}]
    assert convert(messages_key)[0][0]["messages"] == [{"role": "user", "content": "Hi"},
                                                       {"role": "assistant", "content": "Yo"}]


def test_hh_rlhf_text_pairs_split_into_prompt_and_replies():
    ds, fmt = convert(HH)
    assert fmt == "preference_implicit"
    prompt, (chosen, rejected) = row_views(ds[0], fmt)
    assert [m["content"] for m in prompt] == ["What is 2+2?", "4.", "Sure?"]
    assert chosen == [{"role": "assistant", "content": "Yes, 4."}]
    assert rejected == [{"role": "assistant", "content": "No idea."}]
    plain = [{"chosen": "Good answer", "rejected": "Bad answer", "prompt": "Q"}]
    assert convert(plain)[0][0]["chosen"] == "Good answer"  # plain text pairs as before


@pytest.mark.parametrize("rows,method", [(ALPACA, "sft"), (SHAREGPT, "sft"), (HH, "dpo"), (ALPACA, "grpo"),
                                         ([{"instruction": "Add.", "chosen": "5", "rejected": "6"}], "dpo")])
def test_one_step_on_each_format(rows, method, tiny_args, tmp_path, capsys):
    extra = GRPO if method == "grpo" else []
    assert main(tiny_args(method, "--dataset", write(tmp_path, rows * 2), "--max_steps", "1", *extra)) == 0
    assert read_json(tmp_path / f"{method}_run" / "unitune_run.json")["train_rows"] == 2 * len(rows)  # none lost


def test_alpaca_masks_train_the_output_only(tokenizer):
    ds, fmt = convert(ALPACA)
    enc = chat_format(tokenizer).encode(ds[1]["messages"])
    trained = tokenizer.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
    assert trained == "A helper.<|im_end|>Hi!<|im_end|>"


def test_mapped_columns_train_and_check(tiny_args, tmp_path, capsys):
    rows = [{"question": "2+2?", "good": "4", "bad": "5"}] * 4
    data = write(tmp_path, rows)
    assert main(tiny_args("dpo", "--dataset", data, "--max_steps", "1",
                          "--columns", "prompt=question,chosen=good,rejected=bad")) == 0
    record = read_json(tmp_path / "dpo_run" / "unitune_run.json")
    assert record["settings"]["columns"] == "prompt=question,chosen=good,rejected=bad"
    capsys.readouterr()
    assert main(["check", "--dataset", data, "--columns", "prompt=question,chosen=good,rejected=bad", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"][0]["format"] == "preference"
    dialog = write(tmp_path, [{"dialog": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}] * 4,
                   "dialog.jsonl")
    assert main(tiny_args("sft", "--dataset", dialog, "--max_steps", "1", "--columns", "messages=dialog",
                          "--overwrite_output_dir")) == 0


BROKEN = [
    ({"messages": None}, "null or empty conversation"),
    ({"messages": []}, "null or empty conversation"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]}, "turn with no content"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, "empty reply"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": 6}]}, "non-string content"),
]
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


@pytest.mark.parametrize("row,kind", BROKEN)
def test_broken_conversation_rows_found_by_kind(row, kind):
    from datasets import Dataset

    if kind == "non-string content":  # Arrow holds one type per column: numbers in every row
        assert bad_rows(Dataset.from_list([row, row]), "conversational") == {kind: [0, 1]}
        return
    ds = Dataset.from_list([GOOD, row, GOOD])
    assert bad_rows(ds, "conversational") == {kind: [1]}


@pytest.mark.parametrize("row", [{"prompt": "q", "chosen": "a", "rejected": None},
                                 {"prompt": "q", "chosen": "", "rejected": "b"}])
def test_pair_with_a_missing_side(row):
    from datasets import Dataset

    ds = Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}, row])
    assert bad_rows(ds, "preference") == {"pair with a missing side": [1]}


def test_broken_rows_dropped_with_one_warning(tiny_args, tmp_path, capsys):
    rows = [GOOD] * 30 + [{"messages": None}]
    assert main(tiny_args("sft", "--dataset", write(tmp_path, rows), "--max_train_samples", "31",
                          "--max_steps", "1")) == 0
    err = capsys.readouterr().err
    assert "dropping 1 of 31 rows of split 'train' that cannot be used: 1 null or empty conversation (row 30)" in err
    assert read_json(tmp_path / "sft_run" / "unitune_run.json")["train_rows"] == 30


@pytest.mark.slow
def test_check_lists_broken_rows_by_kind(tmp_path, capsys):
    rows = [GOOD, {"messages": None}, BROKEN[3][0], GOOD, BROKEN[3][0]]
    assert main(["check", "--dataset", write(tmp_path, rows), "--json"]) == 0
    split = json.loads(capsys.readouterr().out)["splits"][0]
    assert split["bad_rows"] == {"null or empty conversation": [1], "empty reply": [2, 4]}
    assert main(["check", "--dataset", write(tmp_path, rows)]) == 0
    assert "1 null or empty conversation (row 1); 2 empty reply (rows 2, 4)" in capsys.readouterr().out


# ---------------------------------------------------------------- the README's data table


def readme_formats() -> list[tuple[str, dict, list[str]]]:
    text = DATA_DOC.read_text(encoding="utf-8")
    block = text[text.index("<!-- data formats -->"): text.index("<!-- end of data formats -->")]
    rows = []
    for line in block.splitlines():
        match = re.match(r"\| (\w+) \| `(\{.*\})` \| ([a-z, ]+) \|$", line)
        if match:
            rows.append((match[1], json.loads(match[2]), [m.strip() for m in match[3].split(",")]))
    return rows


def test_readme_table_lists_every_format():
    from unitune.data.formats import FORMATS

    assert [name for name, _, _ in readme_formats()] == list(FORMATS)


@pytest.mark.parametrize("name,row,methods", readme_formats())
def test_readme_examples_check_and_train(name, row, methods, tiny_args, tmp_path, capsys):
    data = write(tmp_path, [row] * 4)
    assert main(["check", "--dataset", data, "--json"]) == 0
    split = json.loads(capsys.readouterr().out)["splits"][0]
    assert split["format"] == name and split["feeds"] == methods
    method = "dpo" if "dpo" in methods else methods[0]
    extra = GRPO if method == "grpo" else []
    assert main(tiny_args(method, "--dataset", data, "--max_steps", "1", *extra)) == 0


def test_columns_as_a_yaml_mapping(tmp_path):
    from unitune.cli import parse_config
    from unitune.config import TrainConfig

    config = tmp_path / "c.yaml"
    config.write_text("method: dpo\ncolumns:\n  prompt: question\n  chosen: good\n")
    assert parse_config(TrainConfig, ["--config", str(config)], "t").column_map == {"prompt": "question",
                                                                                   "chosen": "good"}
    assert parse_config(TrainConfig, ["--method", "dpo", "--columns", "prompt=q, rejected=bad"],
                        "t").column_map == {"prompt": "q", "rejected": "bad"}


def test_pair_whose_last_reply_is_empty_is_dropped():
    from datasets import Dataset

    rows = HH + [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: ",
                  "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Go."}]
    ds, fmt = canonical(Dataset.from_list(rows), "preference_implicit")
    assert bad_rows(ds, fmt) == {"empty reply": [1]}
