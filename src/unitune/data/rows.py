"""The rows that cannot be used (empty replies, missing sides, content that is not text): found, counted by kind, and
dropped with one warning, or refused when more than --max_bad_rows of a split."""

from __future__ import annotations

from datasets import Dataset

from ..errors import UserError, warn
from .formats import as_text

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
        if message.get("role") is None or (content is None and not message.get("tool_calls")):
            return NO_CONTENT
        if content is not None and not isinstance(content, str):
            return NON_STRING
    if reply and any(_empty_reply(m) for m in value):
        return EMPTY_REPLY
    return None


def _empty_reply(message: dict) -> bool:
    """An assistant turn with neither text nor a tool call."""
    return message["role"] == "assistant" and not (message.get("content") or "").strip() and \
        not message.get("tool_calls")


def row_problem(row: dict, fmt: str) -> str | None:
    """Why a canonical row cannot be used, or None."""
    if fmt == "conversational":
        if not row["messages"]:
            return NULL_CONVERSATION
        problem = _value_problem(row["messages"], reply=False)
        if problem:
            return problem
        return EMPTY_REPLY if any(_empty_reply(m) for m in row["messages"]) else None
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


def drop_bad_rows(ds: Dataset, found: dict[str, list[int]], max_fraction: float | None, where: str) -> Dataset:
    """The usable rows (``found``: bad_rows' answer), with one warning naming what was dropped; one error when none
    are, or more than ``max_fraction`` are not. ``max_fraction`` None: drop them silently (a report counts them)."""
    bad = sorted({n for rows in found.values() for n in rows})
    if not bad:
        return ds
    if max_fraction is not None:
        if len(bad) == len(ds):
            raise UserError(f"no usable rows in {where}: {describe(found)}; fix the data (`unitune check` lists them)")
        if len(bad) > max_fraction * len(ds):
            raise UserError(f"{len(bad)} of {len(ds)} rows of {where} cannot be used ({describe(found)}), more than "
                            f"--max_bad_rows {max_fraction:g}; fix the data (`unitune check` lists them) or raise "
                            "--max_bad_rows")
        warn(f"dropping {len(bad)} of {len(ds)} rows of {where} that cannot be used: {describe(found)}")
    drop = set(bad)
    return ds.select([i for i in range(len(ds)) if i not in drop])
