"""The data people have, in unitune's canonical formats: Alpaca, ShareGPT and HH-RLHF text pairs become messages.

    unitune train --method sft --dataset alpaca.json                     # detected, converted, printed
    unitune train --method dpo --dataset pairs.jsonl --columns prompt=question,chosen=good,rejected=bad

After ``canonical`` every row is in one of the canonical formats (conversational messages, preference pairs, ...), so
the methods, `check` and the evaluator need to know nothing of the source format.
"""

from __future__ import annotations

import re

from datasets import Dataset

from ..errors import UserError

# ShareGPT's speaker names -> roles
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
         "system": "system"}
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")

def alpaca_messages(row: dict, reply: str | None) -> list[dict]:
    """An Alpaca row as a conversation: system, history turns, the instruction (and input), then ``reply``."""
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for turn in row.get("history") or []:  # [[instruction, output], ...]
        if not isinstance(turn, (list, tuple)) or len(turn) != 2:
            raise UserError(f"an Alpaca 'history' entry is {turn!r}; each must be an [instruction, output] pair")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    text = "\n\n".join(part for part in (row["instruction"], row.get("input")) if isinstance(part, str) and part)
    messages.append({"role": "user", "content": text})
    return messages + ([{"role": "assistant", "content": reply}] if reply is not None else [])


def sharegpt_messages(turns, row_number: int) -> list[dict] | None:
    """ShareGPT {from, value} turns (or OpenAI {role, content}) as role/content messages; None stays None."""
    if not isinstance(turns, list):
        return turns
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        if turn.get("from") is not None:  # Arrow gives every turn every key: role/content turns have from=None
            speaker = str(turn["from"]).lower()
            if speaker not in ROLES:
                raise UserError(f"row {row_number}: unknown speaker '{turn['from']}' in a ShareGPT conversation; "
                                f"use one of: {', '.join(ROLES)} (or map the roles in the file)")
            messages.append({"role": ROLES[speaker], "content": turn.get("value")})
        else:
            messages.append({"role": turn.get("role"), "content": turn.get("content")})
    return messages


def hh_messages(text: str) -> list[dict] | None:
    """An HH-RLHF dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages; None without the markers."""
    if not isinstance(text, str) or "\n\nHuman:" not in text or "\n\nAssistant:" not in text:
        return None
    parts = HH_TURN.split(text)
    return [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
            for who, body in zip(parts[1::2], parts[2::2])]


def canonical(ds: Dataset, fmt: str) -> tuple[Dataset, str]:
    """Rows of a source format (Alpaca, ShareGPT, HH-RLHF text) in the canonical format it stands for."""
    if fmt == "alpaca":
        ds = ds.map(lambda row: {"messages": alpaca_messages(row, row["output"])},
                    remove_columns=[c for c in ("instruction", "input", "output", "system", "history")
                                    if c in ds.column_names], desc="Converting Alpaca rows")
        return ds, "conversational"
    if fmt == "alpaca_preference":
        ds = ds.map(lambda row: {"prompt": alpaca_messages(row, None),
                                 "chosen": [{"role": "assistant", "content": row["chosen"]}],
                                 "rejected": [{"role": "assistant", "content": row["rejected"]}]},
                    remove_columns=[c for c in ("instruction", "input", "system", "history") if c in ds.column_names],
                    desc="Converting Alpaca pairs")
        return ds, "preference"
    if fmt == "sharegpt" or (fmt == "conversational" and _has_sharegpt_turns(ds["messages"][:1])):
        column = "conversations" if fmt == "sharegpt" else "messages"
        ds = ds.map(lambda row, i: {"_messages": sharegpt_messages(row[column], i)}, with_indices=True,
                    remove_columns=[column], desc="Converting ShareGPT rows")
        return ds.rename_column("_messages", "messages"), "conversational"
    if fmt == "preference_implicit" and len(ds) and hh_messages(ds[0]["chosen"]):
        ds = ds.map(lambda row: {"_chosen": hh_messages(row["chosen"]), "_rejected": hh_messages(row["rejected"])},
                    remove_columns=["chosen", "rejected"], desc="Parsing HH-RLHF dialogues")
        return ds.rename_columns({"_chosen": "chosen", "_rejected": "rejected"}), fmt
    return ds, fmt


def _has_sharegpt_turns(first: list) -> bool:
    return bool(first) and isinstance(first[0], list) and any(isinstance(t, dict) and "from" in t for t in first[0])
