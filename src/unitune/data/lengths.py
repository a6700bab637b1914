"""Token lengths of rows as training renders them, and what --max_length cuts: used by `check` and `train`."""

from __future__ import annotations

import statistics

from ..templates import chat_format
from .formats import as_text
from .views import row_views


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def stats(values: list[int]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "median": int(statistics.median(values)), "p95": percentile(values, 0.95),
            "max": max(values)}


class Lengths:
    """Token counts of prompts and replies, rendered the way training renders them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.chat = chat_format(tokenizer) if tokenizer.chat_template else None

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, messages: list[dict]) -> int:
        if not self.chat:
            return self.count(as_text(messages))
        return self.count(self.chat.render(messages, generation_prompt=True))

    def full(self, prompt: list[dict], reply: list[dict]) -> int:
        if not self.chat:
            return self.count(as_text(prompt) + as_text(reply))
        return self.count(self.chat.render(prompt + reply))


def measure(ds, fmt: str, lengths: Lengths, max_length: int) -> dict:
    """Prompt and reply token counts per row, and what --max_length would cut."""
    prompt_len, reply_len, row_len, cut = [], [], [], []
    for row in ds:
        prompt, replies = row_views(row, fmt)
        p = lengths.prompt(prompt) if prompt else 0
        if prompt or fmt != "text":
            prompt_len.append(p)
        excess = row_tokens = 0  # a row is cut when any of its replies is (a pair has two)
        for reply in replies:
            total = lengths.full(prompt, reply) if prompt else lengths.count(as_text(reply))
            reply_len.append(total - p)
            row_tokens += min(total, max_length)
            excess = max(excess, total - max_length)
        if excess > 0:
            cut.append(excess)
        row_len.append(row_tokens if replies else min(p, max_length))
    return {"prompt_tokens": stats(prompt_len), "reply_tokens": stats(reply_len), "tokens": sum(row_len),
            "row_tokens": stats(row_len),  # what one row feeds the model (a pair: both sequences)
            "truncated": {"rows": len(cut), "max_length": max_length, "max_cut": max(cut, default=0),
                          "mean_cut": round(sum(cut) / len(cut), 1) if cut else 0},
            "prompt_over_max_length": sum(n >= max_length for n in prompt_len)}
