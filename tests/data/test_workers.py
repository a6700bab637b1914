"""Conversions in several processes (data.workers, --num_proc): the same rows, in the same order, as in one; what a
worker finds (pairs dropped, prompts that part) is reported by this process; and how many processes are used."""

import copy

import pytest
from datasets import Dataset

from tests.data.test_tokenized import CONVERSATIONS, PAIRS
from unitune.data import workers
from unitune.data.convert import conversation_rows, pair_ids
from unitune.data.pipeline import DataSettings
from unitune.errors import UserError
from unitune.tokens import token_ids


def warnings(err: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if "warning" in line]


def test_processes(monkeypatch):
    monkeypatch.setattr(workers, "cores", lambda: 8)
    monkeypatch.setattr(workers, "available_memory", lambda: 3 * workers.WORKER_MEMORY + 1)
    assert workers.processes(None, workers.PARALLEL_ROWS - 1) == 1  # small data: this process
    assert workers.processes(None, 100_000) == 3  # one per core, capped by free memory
    assert workers.processes(4, 100_000) == 4 and workers.processes(4, 2) == 2  # --num_proc; no more than rows
    monkeypatch.setattr(workers, "available_memory", lambda: 0)
    assert workers.processes(None, 100_000) == 1


def test_num_proc_must_be_positive(capsys):
    from unitune.cli import main

    assert main(["train", "--method", "sft", "--num_proc", "0", "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["unitune: error: --num_proc must be greater than 0, got 0; pass a positive value"]


def test_pairs_in_two_processes_are_the_rows_of_one(tokenizer, capsys):
    rows = PAIRS * 3 + [{"prompt": [{"role": "user", "content": "Same?"}],
                         "chosen": [{"role": "assistant", "content": "Yes."}],
                         "rejected": [{"role": "assistant", "content": "Yes."}]}]
    one = pair_ids(Dataset.from_list(rows), "preference", DataSettings(num_proc=1), tokenizer)
    first = warnings(capsys.readouterr().err)
    two = pair_ids(Dataset.from_list(rows), "preference", DataSettings(num_proc=2), tokenizer)
    assert two.to_dict() == one.to_dict() and len(two) == len(rows) - 1
    assert warnings(capsys.readouterr().err) == first and len(first) == 1 and "dropping 1 pair(s)" in first[0]


def test_parted_prompts_are_counted_across_processes(tokenizer, capsys):
    """A prompt whose last token merges with the reply's first (a prompt ending mid-word): TRL's rule cuts the
    prompt where the two part, and the warning counts the pairs of every worker."""
    rows = [{"prompt": f"Spell the word: abc{i} hel", "chosen": "lo world", "rejected": "p me"} for i in range(10)]
    one = pair_ids(Dataset.from_list(rows), "preference", DataSettings(num_proc=1), tokenizer)
    said = warnings(capsys.readouterr().err)
    two = pair_ids(Dataset.from_list(rows), "preference", DataSettings(num_proc=2), tokenizer)
    assert two.to_dict() == one.to_dict()
    assert len(said) == 1 and "in 10 pair(s) the tokenised prompt is not a prefix" in said[0]
    assert warnings(capsys.readouterr().err) == said


def test_conversations_in_two_processes_are_the_rows_of_one(tokenizer):
    rows = Dataset.from_list(CONVERSATIONS * 2)
    one = conversation_rows(rows, "conversational", DataSettings(num_proc=1), tokenizer)
    two = conversation_rows(rows, "conversational", DataSettings(num_proc=2), tokenizer)
    assert two.to_dict() == one.to_dict()


def test_a_workers_error_is_one_line(tokenizer):
    rows = PAIRS + [{"prompt": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "again"}],
                     "chosen": [{"role": "assistant", "content": "A"}],
                     "rejected": [{"role": "assistant", "content": "B"}]}]
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]"
                            "['role'] %}{{ raise_exception('roles must alternate') }}{% endif %}<|im_start|>"
                            "{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(UserError, match="roles must alternate"):
        pair_ids(Dataset.from_list(rows), "preference", DataSettings(num_proc=2), strict)


@pytest.mark.parametrize("bos", [False, True])
def test_token_ids_are_the_tokenizers(tokenizer, bos):
    """tokens.token_ids reads the fast tokenizer's encodings directly: the ids and offsets of a tokenizer call, with
    and without special tokens (a tokenizer that adds a BOS)."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    if bos:
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    texts = ["Hello world", "<|im_start|>user\nHi<|im_end|>\n", "  spaced  ", "émigré 数字 123", ""]
    for special in (True, False):
        enc = tok(texts, add_special_tokens=special, return_offsets_mapping=True)
        assert token_ids(tok, texts, add_special_tokens=special) == enc["input_ids"]
        assert token_ids(tok, texts, special, offsets=True) == (enc["input_ids"], enc["offset_mapping"])
    assert (token_ids(tok, texts)[0][0] == tok.bos_token_id) == bos
