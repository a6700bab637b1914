"""The data people have, in unitune's canonical formats: column mapping, Alpaca, ShareGPT, HH-RLHF text pairs,
and the rows that cannot be used (found, counted, dropped).

    unitune train --method sft --dataset alpaca.json                     # detected, converted, printed
    unitune train --method dpo --dataset pairs.jsonl --columns prompt=question,chosen=good,rejected=bad

After ``canonical`` every row is in one of ``data.FORMATS``' canonical formats (conversational messages,
preference pairs, ...), so the methods, `check` and the evaluator need to know nothing of the source format.
"""

from __future__ import annotations

import re

from datasets import Dataset

from .load import FORMATS, as_text, detect_format, load_split
from ..errors import UserError, warn

# ShareGPT's speaker names -> roles
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
         "system": "system"}
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")

# ---------------------------------------------------------------- column mapping


# What --columns may map to: every format's columns, Alpaca's optional ones, and GRPO's reference answer.
COLUMN_KEYS = {c for columns, _ in FORMATS.values() for c in columns} | {"input", "system", "history", "answer"}


def load_rows(dataset: str, split: str, columns: dict[str, str]) -> Dataset:
    """One split with its columns renamed by --columns."""
    ds = load_split(dataset, split)
    return apply_columns(ds, columns, COLUMN_KEYS) if columns else ds


def apply_columns(ds: Dataset, mapping: dict[str, str], keys: set[str]) -> Dataset:
    """Rename the data's columns to the keys unitune reads; a key already present is replaced by the mapped one."""
    repeated = [c for c in set(mapping.values()) if list(mapping.values()).count(c) > 1]
    if repeated:
        raise UserError(f"--columns maps column '{repeated[0]}' to more than one key; map each column once")
    for key, column in mapping.items():
        if key not in keys:
            raise UserError(f"unknown --columns key '{key}'; keys are: {', '.join(sorted(keys))}")
        if column not in ds.column_names:
            raise UserError(f"--columns maps {key} to '{column}', which is not a column; the data has: "
                            f"{', '.join(ds.column_names)}")
    clashes = [key for key, column in mapping.items() if key in ds.column_names and key != column]
    ds = ds.remove_columns([k for k in clashes if k not in mapping.values()])
    return ds.rename_columns({column: key for key, column in mapping.items() if key != column})


# ---------------------------------------------------------------- conversion to canonical formats


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


# ---------------------------------------------------------------- rows that cannot be used

NULL_CONVERSATION = "null or empty conversation"
NO_CONTENT = "turn with no content"
NON_STRING = "non-string content"
EMPTY_REPLY = "empty reply"
MISSING_SIDE = "pair with a missing side"
EMPTY_PROMPT = "empty prompt"


def _value_problem(value, reply: bool) -> str | None:
    """What is wrong with one text-or-messages value, if anything."""
    if value is None or value == [] or value == "":
        return EMPTY_REPLY if reply else None
    if isinstance(value, str):
        return EMPTY_REPLY if reply and not value.strip() else None
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        return NON_STRING
    for message in value:
        content = message.get("content")
        if content is None or message.get("role") is None:
            return NO_CONTENT
        if not isinstance(content, str):
            return NON_STRING
    if reply and any(not m["content"].strip() for m in value if m["role"] == "assistant"):
        return EMPTY_REPLY
    return None


def row_problem(row: dict, fmt: str) -> str | None:
    """Why a canonical row cannot be used, or None."""
    if fmt == "conversational":
        if not row["messages"]:
            return NULL_CONVERSATION
        problem = _value_problem(row["messages"], reply=False)
        if problem:
            return problem
        replies = [m for m in row["messages"] if m["role"] == "assistant"]
        return EMPTY_REPLY if any(not m["content"].strip() for m in replies) else None
    if fmt in ("preference", "preference_implicit"):
        if any(row[side] in (None, "", []) for side in ("chosen", "rejected")):
            return MISSING_SIDE
        problem = next(filter(None, (_value_problem(row[s], reply=True) for s in ("chosen", "rejected"))), None)
        if problem:
            return problem
    for column in ("completion", "text"):
        if column in row and fmt in ("unpaired", "prompt_completion", "text"):
            problem = _value_problem(row[column], reply=True)
            if problem:
                return problem
    if "prompt" in row and fmt != "text" and fmt != "preference_implicit":
        if row["prompt"] in (None, "", []):
            return EMPTY_PROMPT
        problem = _value_problem(row["prompt"], reply=False)
        if problem:
            return problem
        if not as_text(row["prompt"]).strip():
            return EMPTY_PROMPT
    return None


def bad_rows(ds: Dataset, fmt: str) -> dict[str, list[int]]:
    """Row numbers (0-based, in the split) of the rows that cannot be used, by kind."""
    found: dict[str, list[int]] = {}
    for number, row in enumerate(ds):
        problem = row_problem(row, fmt)
        if problem:
            found.setdefault(problem, []).append(number)
    return found


def describe(found: dict[str, list[int]]) -> str:
    return "; ".join(f"{len(rows)} {kind} (row{'s' if len(rows) > 1 else ''} "
                     f"{', '.join(map(str, rows[:5]))}{', ...' if len(rows) > 5 else ''})" for kind, rows in found.items())


def usable_rows(ds: Dataset | None, accepted: tuple[str, ...] | None, where: str):
    """A held-out split for scoring: (its rows in their canonical format without the unusable ones, that format),
    or (None, None) when no format in ``accepted`` (None: any) fits it."""
    source = detect_format(ds.column_names, accepted) if ds is not None else None
    if source is None:
        return None, None
    ds, fmt = canonical(ds, source)
    return drop_bad_rows(ds, fmt, 1.0, where), fmt


def drop_bad_rows(ds: Dataset, fmt: str, max_fraction: float, where: str) -> Dataset:
    """The usable rows, with one warning naming what was dropped; one error when none are, or too many are not."""
    found = bad_rows(ds, fmt)
    bad = sorted({n for rows in found.values() for n in rows})
    if not bad:
        return ds
    if len(bad) == len(ds):
        raise UserError(f"no usable rows in {where}: {describe(found)}; fix the data (`unitune check` lists them)")
    if len(bad) > max_fraction * len(ds):
        raise UserError(f"{len(bad)} of {len(ds)} rows of {where} cannot be used ({describe(found)}), more than "
                        f"--max_bad_rows {max_fraction:g}; fix the data (`unitune check` lists them) or raise "
                        "--max_bad_rows")
    warn(f"dropping {len(bad)} of {len(ds)} rows of {where} that cannot be used: {describe(found)}")
    drop = set(bad)
    return ds.select([i for i in range(len(ds)) if i not in drop])
