"""Token lengths of rows as training renders them, and what --max_length cuts: used by `check` and `train`."""

from __future__ import annotations

import statistics

from ..templates import chat_format
from ..tokens import token_ids
from .formats import as_text, row_tools
from .views import row_views


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def stats(values: list[int]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "median": int(statistics.median(values)), "p95": percentile(values, 0.95),
            "max": max(values)}


BATCH_ROWS = 256  # rows whose texts go to the fast tokenizer in one batch call (its Rust threads share the work)


class Lengths:
    """Token counts of prompts and replies, rendered the way training renders them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.chat = chat_format(tokenizer) if tokenizer.chat_template else None

    def count(self, text: str) -> int:
        return self.counts([text])[0]

    def counts(self, texts: list[str]) -> list[int]:
        """Token counts of many texts: one batch call of the fast tokenizer."""
        if not texts:
            return []
        return [len(ids) for ids in token_ids(self.tokenizer, texts, add_special_tokens=False)]

    def prompt_text(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        return self.chat.render(messages, generation_prompt=True, tools=tools) if self.chat else as_text(messages)

    def full_text(self, prompt: list[dict], reply: list[dict], tools: list[dict] | None = None) -> str:
        return self.chat.render(prompt + reply, tools=tools) if self.chat else as_text(prompt) + as_text(reply)

    def prompt(self, messages: list[dict]) -> int:
        return self.count(self.prompt_text(messages))

    def full(self, prompt: list[dict], reply: list[dict]) -> int:
        return self.count(self.full_text(prompt, reply))


def _texts(row: dict, fmt: str, lengths: Lengths) -> tuple[str | None, list[str], bool]:
    """(the prompt's text, or None without one; each reply's text with its prompt; whether the row has a prompt)."""
    prompt, replies = row_views(row, fmt)
    tools = row_tools(row)
    head = lengths.prompt_text(prompt, tools) if prompt else None
    fulls = [lengths.full_text(prompt, reply, tools) if prompt else as_text(reply) for reply in replies]
    return head, fulls, bool(prompt)


def measure(ds, fmt: str, lengths: Lengths, max_length: int) -> dict:
    """Prompt and reply token counts per row, and what --max_length would cut, from the rows rendered as text (what
    `check` reads). Rows are read and their texts tokenised a batch at a time."""
    counted = []
    for batch in ds.iter(batch_size=BATCH_ROWS):
        plans = [_texts(dict(zip(batch, values)), fmt, lengths) for values in zip(*batch.values())]
        texts = [t for head, fulls, _ in plans for t in ([head] if head is not None else []) + fulls]
        counts = iter(lengths.counts(texts))
        for head, fulls, has_prompt in plans:
            p = next(counts) if head is not None else 0
            counted.append((p if has_prompt or fmt != "text" else None, [next(counts) for _ in fulls]))
    return summarize(counted, max_length)


PROMPT_TOKENS = "prompt_tokens"  # a conversion's column of each row's prompt tokens, read by from_ids and dropped


def without_counts(ds):
    """A conversion's rows without the PROMPT_TOKENS column (the length plan's, not a trainer's)."""
    return ds.remove_columns(PROMPT_TOKENS) if ds is not None and PROMPT_TOKENS in ds.column_names else ds


def list_lengths(ds, column: str) -> list[int]:
    """The length of each row's list in ``column``, read from Arrow (the lists are not turned into Python)."""
    import pyarrow.compute as pc

    return pc.list_value_length(ds.with_format("arrow")[column]).to_pylist()


def from_ids(ds, max_length: int) -> dict | None:
    """The same summary as ``measure``, from the token ids a conversion made (a trainer's own columns: DPO's
    prompt_ids/chosen_ids/rejected_ids; SFT's input_ids with PROMPT_TOKENS), so the rows are not rendered and
    tokenised a second time. None: the rows hold no ids."""
    columns = set(ds.column_names)
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns:
        prompts = list_lengths(ds, "prompt_ids")
        replies = [list_lengths(ds, "chosen_ids"), list_lengths(ds, "rejected_ids")]
    elif {"input_ids", PROMPT_TOKENS} <= columns:
        prompts = ds[PROMPT_TOKENS]
        replies = [[full - p for full, p in zip(list_lengths(ds, "input_ids"), prompts)]]
    else:
        return None
    return summarize([(p, [p + r[i] for r in replies]) for i, p in enumerate(prompts)], max_length)


def summarize(counted: list[tuple[int | None, list[int]]], max_length: int) -> dict:
    """The length summary of rows given as (prompt tokens, or None for a text row without one; each reply's tokens
    with its prompt)."""
    prompt_len, reply_len, row_len, cut = [], [], [], []
    for p, fulls in counted:
        if p is not None:
            prompt_len.append(p)
        p = p or 0
        excess = row_tokens = 0  # a row is cut when any of its replies is (a pair has two)
        for total in fulls:
            reply_len.append(total - p)
            row_tokens += min(total, max_length)
            excess = max(excess, total - max_length)
        if excess > 0:
            cut.append(excess)
        row_len.append(row_tokens if fulls else min(p, max_length))
    return {"prompt_tokens": stats(prompt_len), "reply_tokens": stats(reply_len), "tokens": sum(row_len),
            "row_tokens": stats(row_len),  # what one row feeds the model (a pair: both sequences)
            "truncated": {"rows": len(cut), "max_length": max_length, "max_cut": max(cut, default=0),
                          "mean_cut": round(sum(cut) / len(cut), 1) if cut else 0},
            "prompt_over_max_length": sum(n >= max_length for n in prompt_len)}
