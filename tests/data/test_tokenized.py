"""Rows tokenised once, by the data pipeline: DPO's ids are the ids DPOTrainer's own preparation makes, SFT's batch
encoding gives each row the masks of a row-by-row encoding, and the length plan read from the ids agrees with
`check`'s, which renders and tokenises the rows again."""

import pytest
from datasets import Dataset

from tests.conftest import with_template
from unitune.data.convert import conversation_rows, pair_ids, pair_rows
from unitune.data.lengths import PROMPT_TOKENS, Lengths, from_ids, measure
from unitune.data.pipeline import DataSettings
from unitune.templates import chat_format
from unitune.train.methods import trainer_tokenizer

PAIRS = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
          "chosen": [{"role": "assistant", "content": f"It is {2 * i}." + " Indeed." * i}],
          "rejected": [{"role": "assistant", "content": f"Maybe {i}."}]} for i in range(1, 9)]
PAIRS.append({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour"}],
              "chosen": [{"role": "assistant", "content": "Blue."}],
              "rejected": [{"role": "assistant", "content": "I like trains."}]})
TEXT_PAIRS = [{"prompt": f"Q{i}: why?", "chosen": f" because {i}", "rejected": " no"} for i in range(6)]
CONVERSATIONS = [{"messages": [{"role": "user", "content": f"Count to {i}"},
                               {"role": "assistant", "content": " ".join(map(str, range(i)))},
                               {"role": "user", "content": "Again, backwards"},
                               {"role": "assistant", "content": " ".join(map(str, reversed(range(i))))}]}
                 for i in range(2, 12)]


def trl_prepared(rows: Dataset, tokenizer, tmp_path):
    """What DPOTrainer's own _prepare_dataset makes of string pairs (the trainer unitune's skips it for)."""
    from types import SimpleNamespace

    from trl import DPOConfig, DPOTrainer

    tok = trainer_tokenizer(tokenizer)
    args = DPOConfig(output_dir=str(tmp_path), max_length=None, use_cpu=True, bf16=False, report_to="none")
    trl_self = SimpleNamespace(_tokenizer=tok)
    return DPOTrainer._prepare_dataset(trl_self, rows, tok, args, "train")


@pytest.mark.parametrize("template", [None, "llama3", "gemma", "text"])
def test_pair_ids_are_what_dpo_trainer_makes(tokenizer, tmp_path, template):
    tok = with_template(tokenizer, template) if template not in (None, "text") else tokenizer
    rows = Dataset.from_list(TEXT_PAIRS if template == "text" else PAIRS)
    fmt = "preference"
    ours = pair_ids(rows, fmt, DataSettings(), tok).to_dict()
    theirs = trl_prepared(pair_rows(rows, fmt, DataSettings(), tok), tok, tmp_path).to_dict()
    assert len(ours["prompt_ids"]) == len(rows) and all(ours["chosen_ids"])
    for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert ours[column] == theirs[column], column
    end = tok.convert_tokens_to_ids(trainer_tokenizer(tok).eos_token)
    assert all(ids[-1] == end for ids in ours["chosen_ids"] + ours["rejected_ids"])  # each reply ends its turn


def test_batch_encoding_matches_row_by_row(tokenizer):
    rows = Dataset.from_list(CONVERSATIONS)
    encoded = conversation_rows(rows, "conversational", DataSettings(), tokenizer)
    chat = chat_format(tokenizer)
    for row, got in zip(CONVERSATIONS, encoded):
        one = chat.encode(row["messages"])
        assert got["input_ids"] == one["input_ids"]
        assert got["labels"] == [t if m else -100 for t, m in zip(one["input_ids"], one["assistant_masks"])]
        mask = one["assistant_masks"]
        first_of_last_reply = max(i for i, m in enumerate(mask) if m)
        while mask[first_of_last_reply - 1]:
            first_of_last_reply -= 1
        assert got[PROMPT_TOKENS] == first_of_last_reply  # the prompt: everything before the last reply


def test_length_plan_from_ids_agrees_with_check(tokenizer):
    """SFT: the plan read from the conversion's ids is the plan `check` measures by rendering again."""
    rows = Dataset.from_list(CONVERSATIONS)
    encoded = conversation_rows(rows, "conversational", DataSettings(), tokenizer)
    for max_length in (16, 1024):
        assert from_ids(encoded, max_length) == measure(rows, "conversational", Lengths(tokenizer), max_length)


def test_length_plan_of_pairs_counts_both_sequences(tokenizer):
    rows = Dataset.from_list(PAIRS)
    converted = pair_ids(rows, "preference", DataSettings(), tokenizer)
    plan, ids = from_ids(converted, 40), converted.to_dict()
    full = [len(p) + len(c) + len(p) + len(r) for p, c, r in zip(ids["prompt_ids"], ids["chosen_ids"],
                                                                 ids["rejected_ids"])]
    assert plan["tokens"] == sum(min(len(p) + len(c), 40) + min(len(p) + len(r), 40)
                                 for p, c, r in zip(ids["prompt_ids"], ids["chosen_ids"], ids["rejected_ids"]))
    assert plan["row_tokens"]["max"] <= max(full) and plan["truncated"]["rows"] == sum(
        max(len(p) + len(c), len(p) + len(r)) > 40 for p, c, r in zip(ids["prompt_ids"], ids["chosen_ids"],
                                                                      ids["rejected_ids"]))


@pytest.mark.parametrize("max_length", [12, 30, 1024])
def test_sft_rows_are_what_sft_trainer_makes(tokenizer, tmp_path, max_length):
    """Labels, truncation and the dropping of rows left with no trained token: what SFTTrainer's own preparation
    makes of row-by-row masks (the step unitune's SFT skips)."""
    from types import SimpleNamespace

    from trl import SFTConfig, SFTTrainer

    from unitune.train.methods.sft import truncated

    chat = chat_format(tokenizer)
    rows = Dataset.from_list(CONVERSATIONS)
    ours = truncated(conversation_rows(rows, "conversational", DataSettings(), tokenizer), max_length).to_dict()
    masked = Dataset.from_list([chat.encode(row["messages"]) for row in CONVERSATIONS])
    args = SFTConfig(output_dir=str(tmp_path), max_length=max_length, use_cpu=True, bf16=False, report_to="none")
    trl_self = SimpleNamespace(completion_only_loss=True, _tokenizer=tokenizer, chat_template=None)
    theirs = SFTTrainer._prepare_dataset(trl_self, masked, tokenizer, args, False, None, "train").to_dict()
    assert ours["input_ids"] == theirs["input_ids"] and ours["labels"] == theirs["labels"]
    assert (len(ours["input_ids"]) < len(rows)) == (max_length < 1024)  # short limits leave rows with no reply


def test_large_data_get_an_estimate_and_warnings_once(tokenizer, monkeypatch, capsys):
    """Large data: one line estimating the preparation from a timed sample, whose own warnings are not given (the
    sample's rows are converted again), within a few times the real time."""
    import time

    from unitune.data import pipeline
    from unitune.methods import METHODS

    monkeypatch.setattr(pipeline, "LONG_DATA_ROWS", 1000)
    rows = [{"prompt": f"Q{i}?", "chosen": [{"role": "assistant", "content": f"Answer {i}."}],
             "rejected": [{"role": "assistant", "content": "No." if i else f"Answer {i}."}]} for i in range(1500)]
    prepared = pipeline.Prepared("mem", "train", ["prompt", "chosen", "rejected"], len(rows),
                                 format="preference", rows=Dataset.from_list(rows))
    start = time.perf_counter()
    converted = pipeline.convert(prepared, METHODS["dpo"], DataSettings(), tokenizer)
    took = time.perf_counter() - start
    out = capsys.readouterr()
    line = next(x for x in out.out.splitlines() if "preparing 1,500 pairs: about" in x)
    said = int(line.split("about ")[1].split(" s")[0])
    assert len(converted) == 1499 and out.err.count("whose chosen reply equals the rejected one") == 1
    assert took / 4 <= said <= took * 4 + 1
