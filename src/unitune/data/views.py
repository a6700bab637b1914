"""One canonical row seen as a prompt and its replies, in any format: what lengths, check, the evaluator and the
conversions read."""

from __future__ import annotations

from ..errors import UserError
from .formats import as_messages


def _split_shared(chosen: list[dict], rejected: list[dict]) -> int:
    """Length of the shared leading turns of two conversations."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return n


def pair_row(row: dict, fmt: str) -> dict:
    """One preference row as {prompt, chosen, rejected}: messages lists, or plain strings for plain text."""
    chosen, rejected = row["chosen"], row["rejected"]
    if fmt == "preference" and all(isinstance(v, str) for v in (row["prompt"], chosen, rejected)):
        return {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}
    chosen, rejected = as_messages(chosen, "assistant"), as_messages(rejected, "assistant")
    if fmt == "preference_implicit":  # the turns both replies open with are the prompt: TRL's extract_prompt
        from trl.data_utils import extract_prompt

        pair = extract_prompt({"chosen": chosen, "rejected": rejected}) if chosen and rejected else {"prompt": []}
        if not pair["prompt"]:
            raise UserError("implicit-prompt pairs must share their opening turns (the prompt); add a 'prompt' "
                            "column or start chosen/rejected with the same user turn")
        return pair
    prompt = as_messages(row["prompt"], "user")
    shared = _split_shared(chosen, rejected)
    # UltraFeedback repeats the prompt turn at the start of chosen/rejected: drop it there.
    if _turns(chosen[: len(prompt)]) == _turns(prompt) == _turns(rejected[: len(prompt)]):
        shared = len(prompt)
    elif shared and _turns(chosen[:shared][-len(prompt):]) == _turns(prompt):  # after a system turn: keep them
        prompt = chosen[:shared]
    elif shared and _turns(chosen[:shared]) != _turns(prompt):
        shared = 0
    return {"prompt": prompt, "chosen": chosen[shared:], "rejected": rejected[shared:]}


def _turns(messages: list[dict]) -> list[tuple]:
    """Messages as (role, content): what makes two turns the same, whatever other keys they carry."""
    return [(m["role"], m["content"]) for m in messages]


def prompt_messages(row: dict, fmt: str) -> list[dict]:
    """The prompt of any row as messages: a conversation up to the reply to its last user turn (a tool-use episode's
    calls and results are the reply, not the prompt)."""
    if fmt == "conversational":
        messages = as_messages(row["messages"], "user")
        asked = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        reply = next((i for i, m in enumerate(messages) if i > asked and m["role"] == "assistant"), len(messages))
        return messages[:reply]
    if fmt == "preference_implicit":
        return pair_row(row, fmt)["prompt"]
    return as_messages(row["prompt"], "user")


def row_views(row: dict, fmt: str) -> tuple[list[dict], list[list[dict]]]:
    """(prompt messages, replies) of one row in any format."""
    if fmt in ("preference", "preference_implicit"):
        pair = pair_row(row, fmt)
        return as_messages(pair["prompt"], "user"), [as_messages(pair["chosen"], "assistant"),
                                                   as_messages(pair["rejected"], "assistant")]
    if fmt == "conversational":
        prompt = prompt_messages(row, fmt)
        return prompt, [list(row["messages"])[len(prompt):]]
    if fmt in ("unpaired", "prompt_completion"):
        return as_messages(row["prompt"], "user"), [as_messages(row["completion"], "assistant")]
    if fmt == "prompt_only":
        return as_messages(row["prompt"], "user"), []
    return [], [as_messages(row["text"], "assistant")]
