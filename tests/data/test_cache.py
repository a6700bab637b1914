"""The prepared-data cache: a second run loads what the first prepared; other data, template or length do not."""

import copy
import json

import datasets
import pytest

from unitune.config import TrainConfig
from unitune.methods import METHODS
from unitune.train import run as train_run

DROP = "dropping 1 of 13 rows"


def write_pairs(path, reply: str = "Paris is the capital.") -> str:
    rows = [{"prompt": f"Question {i}?", "chosen": [{"role": "user", "content": f"Question {i}?"},
                                                    {"role": "assistant", "content": f"{reply} ({i})"}],
             "rejected": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"No idea ({i})."}]} for i in range(12)]
    rows.append({"prompt": "Broken?", "chosen": [], "rejected": []})  # one unusable row: dropped with a warning
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def prepared(tmp_path, monkeypatch, tokenizer):
    """training_rows on a file of pairs, counting the times the pipeline really prepares."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    calls = []
    real = train_run.prepare
    monkeypatch.setattr(train_run, "prepare", lambda *a, **k: calls.append(a) or real(*a, **k))

    def run(data: str, tok=tokenizer, **flags):
        cfg = TrainConfig(method="dpo", dataset=data, output_dir=str(tmp_path / "run"), max_bad_rows=0.2, **flags)
        before = len(calls)
        found = train_run.training_rows(cfg, METHODS["dpo"], [data], tok)[:4]  # (rows, count, lengths, entry)
        return found, len(calls) > before

    return run


def test_second_run_loads_the_cache(prepared, tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl")
    (rows, count, lengths, entry), fresh = prepared(data)
    assert fresh and entry and count == 12 and DROP in capsys.readouterr().err
    (again, count2, lengths2, entry2), fresh2 = prepared(data)
    out = capsys.readouterr()
    assert not fresh2 and entry2 == entry  # nothing prepared: the same entry read back
    assert again.to_list() == rows.to_list() and count2 == count and lengths2 == lengths
    assert "loaded from the cache" in out.out and DROP in out.err  # the drop warning is given again


def test_other_inputs_prepare_again(prepared, tmp_path, tokenizer):
    data = write_pairs(tmp_path / "pairs.jsonl")
    (rows, _, _, entry), _ = prepared(data)
    (_, _, lengths, other), fresh = prepared(data, max_length=64)
    assert fresh and other != entry and lengths["truncated"]["max_length"] == 64

    templated = copy.deepcopy(tokenizer)
    templated.chat_template = tokenizer.chat_template + "{# another template #}"
    (_, _, _, other), fresh = prepared(data, tok=templated)
    assert fresh and other != entry

    write_pairs(tmp_path / "pairs.jsonl", reply="Lyon is the capital.")  # the file edited in place
    (edited, _, _, other), fresh = prepared(data)
    assert fresh and other != entry
    assert "Lyon" in tokenizer.decode(edited[0]["chosen_ids"]) and "Paris" in tokenizer.decode(rows[0]["chosen_ids"])


def test_no_data_cache(prepared, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl")
    prepared(data)
    (_, _, _, entry), fresh = prepared(data, no_data_cache=True)
    assert fresh and entry is None


def test_num_proc_reads_the_same_entry(prepared, tmp_path):
    """--num_proc changes how the rows are prepared, not what they are: the run with 2 processes loads the entry the
    run with one made."""
    data = write_pairs(tmp_path / "pairs.jsonl")
    (_, _, _, entry), _ = prepared(data, num_proc=1)
    (_, _, _, again), fresh = prepared(data, num_proc=2)
    assert not fresh and again == entry
