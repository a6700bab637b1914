"""--streaming: the split read as a stream and converted chunk by chunk by the same pipeline; unusable rows skipped
and counted; check reads the first rows; what it cannot do is one line. (Resume on a stream: test_lifecycle.)"""

import json

import pytest

from unitune.cli import main
from unitune.data import stream as streaming
from unitune.data.pipeline import DataSettings, prepare
from unitune.methods import METHODS


def conversations(path, n: int, broken=()) -> str:
    rows = [{"messages": [{"role": "user", "content": f"Say {i}"},
                          {"role": "assistant", "content": "" if i in broken else f"{i} it is."}]} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_a_stream_converts_as_the_loaded_split_does(tmp_path, tokenizer, monkeypatch):
    """Chunk by chunk (three chunks here), the stream yields the rows the loaded split converts to, less the
    unusable ones, which are counted."""
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 40)
    data = conversations(tmp_path / "c.jsonl", 100, broken={5, 77})
    settings = DataSettings(max_bad_rows=None)
    streamed = streaming.stream(data, "train", METHODS["sft"], settings, tokenizer, seed=0)
    rows = list(streamed.rows)
    loaded = prepare(data, "train", METHODS["sft"], settings, tokenizer).converted
    assert sorted(tuple(r["input_ids"]) for r in rows) == sorted(tuple(r) for r in loaded["input_ids"])
    assert streamed.counts == {"read": 100, "unusable": 2, "examples": 98}
    assert [r["input_ids"] for r in rows] != loaded["input_ids"]  # shuffled in its buffer
    assert len(streamed.first.rows) == 39  # the first chunk, prepared for the plan: 40 rows, one unusable


@pytest.mark.parametrize("flags, message", [
    (["--method", "sft", "--streaming"], "--streaming needs --max_steps"),
    (["--method", "grpo", "--streaming", "--max_steps", "2"], "--streaming trains sft and dpo"),
    (["--method", "sft", "--streaming", "--max_steps", "2", "--dataset", "a.jsonl", "b.jsonl"], "reads one --dataset"),
])
def test_what_streaming_cannot_do_is_one_line(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conversations(tmp_path / "a.jsonl", 4)
    assert main(["train", *flags, "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_check_streaming_reads_the_first_rows(tmp_path, capsys):
    data = conversations(tmp_path / "c.jsonl", 300)
    assert main(["check", "--dataset", data, "--streaming", "--sample", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"][0]["rows"] == 50 and report["splits"][0]["streamed"]
    assert main(["check", "--dataset", data, "--streaming", "--sample", "50"]) == 0
    assert "the first 50 rows of its stream checked (--streaming)" in capsys.readouterr().out
