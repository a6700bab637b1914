"""Several sources mixed into one training split: formats may differ, shares follow the weights within sampling
error, and a mixed run trains, resumes, loads its cache and is checked source by source."""

import json
import math

import pytest

from unitune.cli import main
from unitune.config import TrainConfig
from unitune.data.mix import mix
from unitune.data.pipeline import prepare
from unitune.errors import UserError
from unitune.methods import METHODS

from conftest import read_json


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def chats(n: int, tag: str = "chat") -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{tag} question {i}"},
                          {"role": "assistant", "content": f"{tag} answer {i}."}]} for i in range(n)]


def completions(n: int) -> list[dict]:
    return [{"prompt": f"Complete {i}:", "completion": f" done {i}."} for i in range(n)]


def test_shares_follow_the_weights_on_a_10k_draw(tmp_path):
    """Conversations and prompt/completion strings, 0.7/0.3: the first 10,000 rows of the mix hold each source's
    share within four standard errors, all as conversations, seeded (the same seed, the same rows)."""
    a = prepare(write(tmp_path / "a.jsonl", chats(12_000)), "train", METHODS["sft"])
    b = prepare(write(tmp_path / "b.jsonl", completions(12_000)), "train", METHODS["sft"])
    mixed, sources = mix([a, b], "conversations", [0.7, 0.3], seed=3, limit=10_000)
    assert mixed.format == "conversational" and len(mixed.rows) == 10_000
    assert sum(s.drawn for s in sources) == 10_000
    share, error = sources[0].drawn / 10_000, math.sqrt(0.7 * 0.3 / 10_000)
    assert abs(share - 0.7) < 4 * error, share
    firsts = mixed.rows.select(range(50))["messages"]
    assert any(m[0]["content"].startswith("Complete") for m in firsts)  # b's rows, as messages
    again, _ = mix([a, b], "conversations", [0.7, 0.3], seed=3, limit=10_000)
    assert again.rows.select(range(50))["messages"] == firsts


def test_pairs_of_two_formats_mix(tmp_path):
    explicit = [{"prompt": f"Q{i}?", "chosen": [{"role": "assistant", "content": f"Yes {i}."}],
                 "rejected": [{"role": "assistant", "content": "No."}]} for i in range(30)]
    implicit = [{"chosen": [{"role": "user", "content": f"R{i}?"}, {"role": "assistant", "content": "Good."}],
                 "rejected": [{"role": "user", "content": f"R{i}?"}, {"role": "assistant", "content": "Bad."}]}
                for i in range(30)]
    parts = [prepare(write(tmp_path / f"{n}.jsonl", rows), "train", METHODS["dpo"])
             for n, rows in (("e", explicit), ("i", implicit))]
    mixed, sources = mix(parts, "pair_ids", None, seed=0)
    assert {s.format for s in sources} == {"preference", "preference_implicit"} and mixed.format == "preference"
    prompts = {row["prompt"][-1]["content"][0] for row in mixed.rows}
    assert prompts == {"Q", "R"} and sources[0].weight == sources[1].weight == 0.5


def test_text_rows_do_not_mix_with_conversations(tmp_path):
    a = prepare(write(tmp_path / "a.jsonl", chats(5)), "train", METHODS["sft"])
    t = prepare(write(tmp_path / "t.jsonl", [{"text": f"plain {i}"} for i in range(5)]), "train", METHODS["sft"])
    with pytest.raises(UserError, match="cannot mix plain 'text' rows with conversations"):
        mix([a, t], "conversations", None, seed=0)


@pytest.mark.parametrize("flags, message", [
    (["--dataset_weights", "1"], "give two or more --dataset values"),
    (["--dataset", "a", "b", "--dataset_weights", "1"], "1 values for 2 --dataset sources"),
    (["--dataset", "a", "b", "--dataset_weights", "1", "0"], "must all be greater than 0"),
])
def test_bad_weights_are_one_line(flags, message, capsys):
    assert main(["train", "--method", "sft", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_mixed_run_trains_resumes_and_is_checked(tiny_args, tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", chats(40))
    b = write(tmp_path / "b.jsonl", chats(40, tag="other"))
    mixed = ["--dataset", a, b, "--dataset_weights", "0.75", "0.25", "--save_steps", "1"]
    assert main(tiny_args("sft", *mixed, "--max_steps", "1")) == 0
    out = capsys.readouterr().out
    assert "2 sources mixed (8 rows)" in out and f"{a} 'train' (conversational):" in out
    record = read_json(tmp_path / "sft_run" / "unitune_run.json")
    assert [s["dataset"] for s in record["sources"]] == [a, b] and record["dataset"] == a
    assert sum(s["drawn"] for s in record["sources"]) == record["train_rows"] == 8
    assert main(tiny_args("sft", *mixed, "--max_steps", "2", "--resume")) == 0  # the same sources: it continues
    out = capsys.readouterr().out
    assert "resuming from" in out and "loaded from the cache" in out
    assert read_json(tmp_path / "sft_run" / "unitune_run.json")["global_step"] == 2
    assert main(tiny_args("sft", "--dataset", a, "--max_steps", "3", "--resume")) == 2  # one source is another run
    assert "it was trained with --dataset" in capsys.readouterr().err
    assert main(["check", "--dataset", a, b, "--method", "sft"]) == 0
    out = capsys.readouterr().out
    assert f"dataset: {a}" in out and f"dataset: {b}" in out


def test_one_dataset_given_as_a_string_is_one_source():
    assert TrainConfig(method="sft", dataset="x.jsonl").dataset == ["x.jsonl"]
