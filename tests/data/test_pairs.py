"""Preference pairs with a system turn: the system turn stays in the prompt, in every way a pair can be written."""

import pytest
from datasets import Dataset

from unitune.data.views import pair_row, row_views

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Hi?"}
GOOD = {"role": "assistant", "content": "Hello."}
BAD = {"role": "assistant", "content": "Go away."}
SPLIT = {"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}


@pytest.mark.parametrize("row,fmt", [
    ({"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]}, "preference_implicit"),
    ({"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}, "preference"),
    ({"prompt": [SYSTEM, USER], "chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]}, "preference"),
    ({"prompt": [SYSTEM, USER], "chosen": "Hello.", "rejected": "Go away."}, "preference"),
    ({"prompt": "Hi?", "chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]}, "preference"),
], ids=["implicit", "prompt_messages", "repeated_prompt_messages", "text_replies", "repeated_prompt_text"])
def test_system_turn_stays_in_the_prompt(row, fmt):
    assert pair_row(row, fmt) == SPLIT
    prompt, replies = row_views(row, fmt)
    assert prompt == [SYSTEM, USER] and all(turn["role"] == "assistant" for reply in replies for turn in reply)


def test_rendered_pair_has_the_system_turn_before_both_replies(tokenizer):
    from unitune.data.convert import render_pairs

    pair = render_pairs(Dataset.from_list([pair_row({"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]},
                                                     "preference_implicit")]), tokenizer)[0]
    assert pair["prompt"].count("Be brief.") == 1 and pair["prompt"].index("Be brief.") < pair["prompt"].index("Hi?")
    assert (pair["chosen"], pair["rejected"]) == ("Hello.<|im_end|>", "Go away.<|im_end|>")
