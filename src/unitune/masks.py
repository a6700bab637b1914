"""The check every rendered row passes before it is trained: one trained span per assistant reply, holding that reply's
text and ending on an end-of-turn token, and no other message's text inside any span (``check_spans``); and the
token mask those spans give (``span_mask``). ``templates.ChatFormat`` finds the spans; a row that fails stops
training with one line, so a guessed mask is never used."""

from __future__ import annotations

import bisect
import re

from .errors import UserError

FIX = "pass a template with {% generation %} markers around assistant replies via --chat_template FILE"
TOKEN_FIX = ("use the chat template written for this model's tokenizer, or a tokenizer that has the token (a template "
             "from another model family needs that family's special tokens)")
TOOLS_FIX = ("pass --chat_template with a template that renders tool calls (TRL ships several in trl/chat_templates, "
             "e.g. qwen2_5.jinja)")


def reply_text(content: str) -> str:  # what of a reply a template must show: it may drop reasoning, and trim
    return content.split("</think>")[-1].strip()


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix: a binary search over slice comparisons (C speed, not per character)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if a[:mid] == b[:mid] else (low, mid - 1)
    return low


def token_spans(starts: list[int], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans as token index ranges: the tokens that start inside each (``starts``: each token's first
    character, in text order), found by bisection, so the cost is the spans', not a Python step per token."""
    return [(bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)) for start, end in spans]


def span_mask(starts: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token that starts inside a span."""
    mask = [0] * len(starts)
    for first, last in token_spans(starts, spans):
        mask[first:last] = [1] * (last - first)
    return mask


def fail(tokenizer, why: str, text: str, fix: str = FIX):
    name = getattr(tokenizer, "name_or_path", "") or "the model"
    raise UserError(f"cannot find a correct loss mask with the chat template of {name} ({why}; row starts "
                    f"{text[:60]!r}); {fix}")


def _only_control_tokens(tail: str, added: list[str]) -> bool:
    """Whitespace and the tokenizer's added tokens (end-of-turn markers; ``added`` longest first) only."""
    rest = tail
    for token in added:
        rest = rest.replace(token, "")
    return not rest.strip()


def _check_tail(chat, tail: str, text: str) -> None:
    """What a span holds after its reply: control tokens only (the end-of-turn token), and at least one."""
    if not _only_control_tokens(tail, chat.added_tokens):
        marker = re.match(r"\s*(<[^<>\s]{1,40}>)", tail)  # <|eot_id|>, <end_of_turn>: a foreign control token
        if marker and len(chat.tokenizer(marker.group(1), add_special_tokens=False)["input_ids"]) > 1:
            fail(chat.tokenizer, f"the template ends a reply with {marker.group(1)!r}, which is no single token of "
                 "this tokenizer", text, TOKEN_FIX)
        fail(chat.tokenizer, f"the trained span runs past the reply into {tail.strip()[:40]!r}", text)
    if not tail.strip():
        fail(chat.tokenizer, "no end-of-turn token is trained after the reply, so the model would not learn to stop",
             text)


def check_spans(chat, messages: list[dict], text: str, spans: list[tuple[int, int]],
                tools: list[dict] | None = None) -> list[tuple[int, int]]:
    """The spans of ``messages`` (as ``chat`` prepares them, rendered with ``tools``) rendered as ``text``, checked:
    one per assistant reply, holding that reply's text and ending on an end-of-turn token; no other message's text
    (a tool's result included) inside any span. A reply that calls tools holds each call's name, in order, after its
    text. Returns the spans with trailing whitespace dropped, each starting no earlier than the end of its generation
    prompt."""
    spans = [(s, e) for s, e in spans if e > s]
    replies = [m for m in messages if m["role"] == "assistant"]
    tidy, cursor, turns = [], 0, iter(spans)
    if len(spans) != len(replies):
        fail(chat.tokenizer, f"found {len(spans)} trained spans for {len(replies)} assistant replies", text)
    for index, message in enumerate(messages):
        content = str(message.get("content") or "")
        needle = reply_text(content) if message["role"] == "assistant" else content.strip()
        if message["role"] != "assistant":
            at = text.find(needle, cursor) if needle else -1
            if at >= 0 and any(s < at + len(needle) and at < e for s, e in spans):
                fail(chat.tokenizer, f"the text of a {message['role']} turn would carry loss", text)
            cursor = at + len(needle) if at >= 0 else cursor
            continue
        start, end = next(turns)
        calls = [(call.get("function") or call).get("name", "") for call in message.get("tool_calls") or []]
        if not needle and not calls:
            raise UserError(f"a row has an empty assistant reply (row starts {text[:60]!r}); fill it in or "
                            "remove the row")
        at = text.rfind(needle, start, end) if needle else start  # the reply closes its span (reasoning may precede)
        if at < 0:
            fail(chat.tokenizer, "an assistant reply does not lie inside its trained span", text)
        after = at + len(needle)
        for name in calls:
            found = text.find(name, after, end)
            if found < 0:
                fail(chat.tokenizer, f"the call of tool {name!r} does not lie inside its reply's trained span (the "
                     "template drops tool calls)", text, TOOLS_FIX)
            after = found + len(name)
        # Role headers are not trained: a span starts no earlier than the end of the generation prompt.
        start = max(start, min(common_prefix(chat.render(messages[:index], generation_prompt=True, tools=tools),
                                             text), at))
        tail = text[after:end]
        if calls:  # the calls' arguments and closing tags are template text; the span ends on a control token
            if not any(tail.rstrip().endswith(token) for token in chat.added_tokens):
                fail(chat.tokenizer, "no end-of-turn token is trained after the tool call", text)
        else:
            _check_tail(chat, tail, text)
        end = after + len(tail.rstrip())
        tidy.append((start, end))
        cursor = end
    return tidy
