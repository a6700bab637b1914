"""Bundled data, format detection and conversion, assistant-only masks."""

import pyarrow.parquet as pq
import pytest
from datasets import Dataset, load_dataset

from unitune.answers import check_answer
from unitune.data.convert import to_conversations, to_pairs, to_unpaired
from unitune.data.demo_tasks import SPLIT_SIZES, generate_splits
from unitune.data.formats import detect_format
from unitune.data.load import DEMO_DIR
from unitune.data.views import pair_row
from unitune.templates import chat_format

COLUMNS = {"prompt", "prompt_id", "messages", "chosen", "rejected", "score_chosen", "score_rejected", "answer"}


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_demo_split_loads_like_the_hub(split):
    ds = load_dataset(str(DEMO_DIR), split=split)
    assert set(ds.column_names) == COLUMNS
    assert len(ds) == SPLIT_SIZES[split]
    row = ds[0]
    assert row["chosen"][0] == {"content": row["prompt"], "role": "user"}
    assert row["chosen"][1]["role"] == "assistant" and row["score_chosen"] > row["score_rejected"]
    assert check_answer(row["chosen"][1]["content"], row["answer"], "tagged")


def test_committed_parquet_matches_generator():
    generated = generate_splits()
    for split, rows in generated.items():
        table = pq.read_table(DEMO_DIR / "data" / f"{split}-00000-of-00001.parquet")
        assert table.to_pylist() == rows, f"{split} differs: rerun scripts/make_demo_data.py"


def test_test_prompts_are_held_out():
    splits = generate_splits()
    train = {r["prompt"] for s in ("train_sft", "train_prefs", "train_gen") for r in splits[s]}
    assert not train & {r["prompt"] for s in ("test_sft", "test_prefs", "test_gen") for r in splits[s]}


@pytest.mark.parametrize("columns,expected", [
    (["prompt", "chosen", "rejected"], "preference"), (["chosen", "rejected"], "preference_implicit"),
    (["prompt", "completion", "label"], "unpaired"), (["messages"], "conversational"),
    (["prompt", "completion"], "prompt_completion"), (["prompt"], "prompt_only"), (["text"], "text"),
    (["foo"], None)])
def test_detect_format(columns, expected):
    assert detect_format(columns) == expected


def test_detect_format_respects_method_preference():
    columns = ["prompt", "chosen", "rejected", "messages"]
    assert detect_format(columns, ("conversational", "preference")) == "conversational"


USER = {"role": "user", "content": "Hi?"}
GOOD = {"role": "assistant", "content": "Hello."}
BAD = {"role": "assistant", "content": "Go away."}


@pytest.mark.parametrize("row,fmt", [
    ({"prompt": "Hi?", "chosen": [USER, GOOD], "rejected": [USER, BAD]}, "preference"),  # UltraFeedback
    ({"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}, "preference"),
    ({"chosen": [USER, GOOD], "rejected": [USER, BAD]}, "preference_implicit"),
])
def test_pair_row_conversational_forms(row, fmt):
    assert pair_row(row, fmt) == {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}


def test_pair_row_plain_text():
    row = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}
    assert pair_row(row, "preference") == row


def test_to_pairs_drops_identical_pairs(capsys):
    ds = Dataset.from_list([{"prompt": "a", "chosen": "x", "rejected": "y"},
                            {"prompt": "b", "chosen": "z", "rejected": "z"}])
    assert len(to_pairs(ds, "preference")) == 1
    assert "dropping 1 pair(s)" in capsys.readouterr().err


def test_kto_unpairing_counts_and_labels():
    ds = Dataset.from_list([{"prompt": "Hi?", "chosen": [USER, GOOD], "rejected": [USER, BAD]}] * 3)
    rows = to_unpaired(ds, "preference")
    assert len(rows) == 6 and rows["label"] == [True, False] * 3  # each pair's two rows side by side, as before
    assert rows[0] == {"prompt": [USER], "completion": [GOOD], "label": True}
    assert rows[1]["completion"] == [BAD]


def test_sft_from_preference_uses_chosen():
    ds = Dataset.from_list([{"prompt": "Hi?", "chosen": [USER, GOOD], "rejected": [USER, BAD]}])
    assert to_conversations(ds, "preference")[0]["messages"] == [USER, GOOD]


def test_assistant_mask_covers_replies_only(tokenizer):
    messages = [USER, GOOD, {"role": "user", "content": "And?"}, BAD]
    enc = chat_format(tokenizer).encode(messages)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert len(ids) == len(mask)
    assert ids == tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert trained == "Hello.<|im_end|>Go away.<|im_end|>"
    last = chat_format(tokenizer).encode(messages, last_only=True)
    assert tokenizer.decode([t for t, m in zip(ids, last["assistant_masks"]) if m]) == "Go away.<|im_end|>"


def test_local_folder_is_read_once_until_a_file_changes(tmp_path, monkeypatch):
    """A local folder's splits are built once per process (training and evaluation ask for several), and an
    edited file is read again, never served stale from the datasets cache."""
    import os

    from unitune.data import load as data

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "one"}\n')
    (folder / "test.jsonl").write_text('{"text": "two"}\n')
    builds = []
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: builds.append(a) or load_dataset(*a, **k))
    assert data.load_split(str(folder), "train")["text"] == ["one"]
    assert data.load_split(str(folder), "test")["text"] == ["two"]
    assert len(builds) == 1
    (folder / "train.jsonl").write_text('{"text": "edited"}\n')
    os.utime(folder / "train.jsonl", ns=(1, 1))  # a different time even on a coarse-grained clock
    assert data.load_split(str(folder), "train")["text"] == ["edited"]
    assert len(builds) == 2
    (folder / "validation.jsonl").write_text('{"text": "three"}\n')  # a split added while the process runs
    assert set(data.split_names(str(folder))) == {"train", "test", "validation"}
    assert data.load_split(str(folder), "validation")["text"] == ["three"]
