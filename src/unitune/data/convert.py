"""Canonical rows in the shape each method's TRL trainer takes: conversations (SFT), pairs (DPO, ORPO), unpaired
rows (KTO), prompts (GRPO), and pairs rendered with the chat template as SFT trains them."""

from __future__ import annotations

from datasets import Dataset
from trl.data_utils import unpair_preference_dataset

from ..errors import UserError, warn
from ..templates import FIX, chat_format
from .formats import as_messages
from .views import pair_row, prompt_messages


def to_pairs(ds: Dataset, fmt: str) -> Dataset:
    """Preference data for DPO/ORPO, with pairs whose chosen equals rejected dropped (warned)."""
    pairs = ds.map(lambda row: pair_row(row, fmt), remove_columns=ds.column_names, desc="Preparing pairs")
    same = [i for i, row in enumerate(pairs) if row["chosen"] == row["rejected"]]
    if same:
        if len(same) == len(pairs):
            raise UserError("every pair has chosen equal to rejected, nothing to learn from; check the data")
        warn(f"dropping {len(same)} pair(s) whose chosen reply equals the rejected one "
                      f"(first: row {same[0]})")
        drop = set(same)
        pairs = pairs.select([i for i in range(len(pairs)) if i not in drop])
    return pairs


def to_unpaired(ds: Dataset, fmt: str) -> Dataset:
    """KTO rows {prompt, completion, label}; preference pairs are unpaired into one row per reply."""
    if fmt == "unpaired":
        return ds.select_columns(["prompt", "completion", "label"])
    return unpair_preference_dataset(to_pairs(ds, fmt), desc="Unpairing preference pairs")


def to_conversations(ds: Dataset, fmt: str) -> Dataset:
    """SFT rows: conversations stay; preference pairs train on prompt + chosen."""
    if fmt == "preference" or fmt == "preference_implicit":
        def join(row):
            pair = pair_row(row, fmt)
            return {"messages": as_messages(pair["prompt"], "user") + as_messages(pair["chosen"], "assistant")}
        return ds.map(join, remove_columns=ds.column_names, desc="Preparing conversations")
    keep = {"conversational": ["messages"], "prompt_completion": ["prompt", "completion"], "text": ["text"]}[fmt]
    return ds.select_columns(keep)


def to_prompts(ds: Dataset, fmt: str) -> Dataset:
    """GRPO rows: ``prompt`` as messages; other columns stay for reward functions (e.g. ``answer``)."""
    return ds.map(lambda row: {"prompt": prompt_messages(row, fmt)}, desc="Preparing prompts")


def render_pairs(ds, tokenizer):
    """DPO/ORPO rows whose replies are messages, as the strings SFT would train: the prompt text up to the reply,
    and each reply's trained span (its end-of-turn token included). Plain-text pairs are left as they are."""
    if not isinstance(ds[0]["chosen"], list):
        return ds
    chat = chat_format(tokenizer)

    def render(row):
        prompt, chosen = chat.split_reply(row["prompt"], row["chosen"])
        other, rejected = chat.split_reply(row["prompt"], row["rejected"])
        if other != prompt:
            raise UserError("the chat template renders a pair's prompt differently before its chosen and its rejected "
                            f"reply ({prompt[-40:]!r} vs {other[-40:]!r}); " + FIX)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    return ds.map(render, desc="Rendering pairs with the chat template")


def render_unpaired(ds, tokenizer):
    """KTO rows {prompt, completion, label} with messages, rendered as render_pairs renders pairs."""
    if not isinstance(ds[0]["completion"], list) and not isinstance(ds[0]["prompt"], list):
        return ds
    chat = chat_format(tokenizer)

    def render(row):
        prompt, completion = chat.split_reply(as_messages(row["prompt"], "user"),
                                              as_messages(row["completion"], "assistant"))
        return {"prompt": prompt, "completion": completion}

    return ds.map(render, desc="Rendering rows with the chat template")
