"""Canonical rows in the shape each method's TRL trainer takes: conversations (SFT), pairs (DPO, ORPO), unpaired
rows (KTO), prompts (GRPO), rendered with the chat template as SFT trains them. ``CONVERSIONS`` is what the method
table's ``rows`` names: the data pipeline's last step."""

from __future__ import annotations

from datasets import Dataset

from ..errors import UserError, warn
from ..templates import FIX, chat_format, reply_end, require_chat_template
from ..tokens import token_ids
from .formats import as_messages, row_tools
from .lengths import BATCH_ROWS, PROMPT_TOKENS
from .views import pair_row, prompt_messages
from .workers import mapped


SAME = "__unitune_same"  # the flag of a pair whose chosen equals rejected, read from Arrow, then dropped
PARTED = "__unitune_parted"  # the flag of a pair whose tokenised prompt is not a prefix of prompt + reply


def to_pairs(ds: Dataset, fmt: str) -> Dataset:
    """Preference data for DPO/ORPO, with pairs whose chosen equals rejected dropped (warned): flagged in the same
    pass that makes the pairs."""
    def pair(row):
        found = pair_row(row, fmt)
        return found | {SAME: found["chosen"] == found["rejected"]}

    return without_same(ds.map(pair, remove_columns=ds.column_names, desc="Preparing pairs"))


def flagged(ds: Dataset, column: str) -> list[int]:
    """The rows whose flag ``column`` is set (read from Arrow, not turned into Python rows)."""
    return [i for i, flag in enumerate(ds.with_format("arrow")[column].to_pylist()) if flag]


def without_same(pairs: Dataset) -> Dataset:
    """The pairs flagged SAME dropped, with one warning (an error when that is every pair), and the flag column."""
    same = flagged(pairs, SAME)
    pairs = pairs.remove_columns(SAME)
    if same:
        if len(same) == len(pairs):
            raise UserError("every pair has chosen equal to rejected, nothing to learn from; check the data")
        warn(f"dropping {len(same)} pair(s) whose chosen reply equals the rejected one (first: row {same[0]})")
        drop = set(same)
        pairs = pairs.select([i for i in range(len(pairs)) if i not in drop])
    return pairs


def to_unpaired(ds: Dataset, fmt: str) -> Dataset:
    """KTO rows {prompt, completion, label}; preference pairs are unpaired into one row per reply."""
    if fmt == "unpaired":
        return ds.select_columns(["prompt", "completion", "label"])
    from trl.data_utils import unpair_preference_dataset

    # batch_size 1: each pair's two rows stay next to each other (TRL's default batches put a batch's chosen rows
    # before its rejected ones), so a seed gives the same batches as before
    return unpair_preference_dataset(to_pairs(ds, fmt), batch_size=1, desc="Unpairing preference pairs")


def to_conversations(ds: Dataset, fmt: str) -> Dataset:
    """SFT rows: conversations stay; preference pairs train on prompt + chosen."""
    if fmt == "preference" or fmt == "preference_implicit":
        def join(row):
            pair = pair_row(row, fmt)
            return {"messages": as_messages(pair["prompt"], "user") + as_messages(pair["chosen"], "assistant")}
        return ds.map(join, remove_columns=ds.column_names, desc="Preparing conversations")
    keep = {"conversational": ["messages"], "prompt_completion": ["prompt", "completion"], "text": ["text"]}[fmt]
    return ds.select_columns(keep + (["tools"] if fmt == "conversational" and "tools" in ds.column_names else []))


def to_prompts(ds: Dataset, fmt: str) -> Dataset:
    """GRPO rows: ``prompt`` as messages; other columns stay for reward functions (e.g. ``answer``)."""
    return ds.map(lambda row: {"prompt": prompt_messages(row, fmt)}, desc="Preparing prompts")


def render_pair(chat, row: dict) -> dict:
    """One pair whose replies are messages, as the strings SFT would train: the prompt text up to the reply, and each
    reply's trained span (its end-of-turn token included)."""
    prompt, chosen = chat.split_reply(row["prompt"], row["chosen"])
    other, rejected = chat.split_reply(row["prompt"], row["rejected"])
    if other != prompt:
        raise UserError("the chat template renders a pair's prompt differently before its chosen and its rejected "
                        f"reply ({prompt[-40:]!r} vs {other[-40:]!r}); " + FIX)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def render_pairs(ds, tokenizer):
    """DPO/ORPO rows whose replies are messages, rendered (render_pair). Plain-text pairs are left as they are."""
    if not isinstance(ds[0]["chosen"], list):
        return ds
    chat = chat_format(tokenizer)
    return ds.map(lambda row: render_pair(chat, row), desc="Rendering pairs with the chat template")


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


def conversation_rows(ds, fmt: str, settings, tokenizer):
    """SFT: conversations tokenised with labels on the assistant replies only (every token with --train_on_prompt),
    and each row's prompt tokens (those before its last reply) for the length plan; prompt/completion and text rows
    as they are (TRL masks the prompt itself: completion_only_loss)."""
    ds = to_conversations(ds, fmt)
    if "messages" not in ds.column_names:
        return ds
    require_chat_template(tokenizer, tokenizer.name_or_path or "the model")
    chat = chat_format(tokenizer)

    def encode(batch):
        tools = [row_tools({"tools": t}) for t in batch["tools"]] if "tools" in batch else None
        if settings.train_on_prompt:  # every token trained: no reply spans to find
            ids = tokenizer([chat.render(m, tools=t) for m, t in zip(batch["messages"], tools or [None] * len(
                batch["messages"]))], add_special_tokens=False)["input_ids"]
            return {"input_ids": ids, "labels": ids}
        ids, spans = chat.encode_batch(batch["messages"], tools)
        labels = []
        for row, ranges in zip(ids, spans):
            trained = [-100] * len(row)
            for first, last in ranges:
                trained[first:last] = row[first:last]
            labels.append(trained)
        prompts = [ranges[-1][0] if ranges else len(row) for row, ranges in zip(ids, spans)]
        return {"input_ids": ids, "labels": labels, PROMPT_TOKENS: prompts}

    return mapped(ds, encode, settings.num_proc, batched=True, batch_size=BATCH_ROWS, remove_columns=ds.column_names,
                  desc="Tokenizing (assistant-only loss)")


def pair_tokens(tokenizer, pairs: list[dict], end: str | None) -> dict:
    """String pairs tokenised as DPOTrainer's own preparation tokenises them, a batch at a time (one call of the fast
    tokenizer per column), so that it is done once: the length plan reads these ids, and the trainer takes them as
    they are (train.methods.dpo). As TRL does: the reply end appended to a reply without it; the prompt, prompt +
    chosen and prompt + rejected tokenised; the prompt cut where the three part (flagged PARTED)."""
    from trl.data_utils import common_prefix_length

    def ended(reply: str) -> str:
        return reply if not end or reply.endswith(end) else reply + end

    prompts = token_ids(tokenizer, [p["prompt"] for p in pairs])
    chosen = token_ids(tokenizer, [p["prompt"] + ended(p["chosen"]) for p in pairs])
    rejected = token_ids(tokenizer, [p["prompt"] + ended(p["rejected"]) for p in pairs])
    out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], PARTED: []}
    for p, c, r in zip(prompts, chosen, rejected):
        n = min(common_prefix_length(p, c), common_prefix_length(p, r))
        out[PARTED].append(n < len(p))
        out["prompt_ids"].append(p[:n])
        out["chosen_ids"].append(c[n:])
        out["rejected_ids"].append(r[n:])
    return out


def pair_rows(ds, fmt: str, settings, tokenizer):
    """DPO, ORPO: pairs, rendered as SFT and the evaluator render them."""
    return render_pairs(to_pairs(ds, fmt), tokenizer)


DROPPED = {"prompt": "", "chosen": "", "rejected": ""}  # what pair_ids renders of a pair it drops


def pair_ids(ds, fmt: str, settings, tokenizer):
    """DPO: pairs made (as to_pairs makes them), rendered (render_pair) and tokenised (pair_tokens) in one batched
    pass, run in several processes where that pays (data.workers): what pair_rows makes, tokenised as DPOTrainer
    would tokenise it."""
    end = reply_end(tokenizer)
    chat = chat_format(tokenizer) if tokenizer.chat_template else None

    def prepare(batch):
        pairs = [pair_row(dict(zip(batch, values)), fmt) for values in zip(*batch.values())]
        same = [pair["chosen"] == pair["rejected"] for pair in pairs]
        rendered = [DROPPED if dropped else render_pair(chat or chat_format(tokenizer), pair)
                    if isinstance(pair["chosen"], list) else pair for pair, dropped in zip(pairs, same)]
        return pair_tokens(tokenizer, rendered, end) | {SAME: same}

    ds = mapped(ds, prepare, settings.num_proc, batched=True, batch_size=BATCH_ROWS, remove_columns=ds.column_names,
                desc="Preparing and tokenizing pairs")
    parted = flagged(ds, PARTED)
    if parted:
        warn(f"in {len(parted)} pair(s) the tokenised prompt is not a prefix of the tokenised prompt + reply (tokens "
             "merge across the boundary); their replies start where the two part, as TRL does")
    return without_same(ds.remove_columns(PARTED))


def scored_pairs(ds, fmt: str, settings, tokenizer):
    """RM: each pair as two whole conversations, prompt + reply, which TRL's reward trainer renders with the chat
    template: the text GRPO's reward models and the evaluator score (the score is read at the last token that is not
    padding, so training and scoring must end alike). Plain-text pairs stay strings (TRL appends the EOS)."""
    pairs = to_pairs(ds, fmt)
    if not len(pairs) or isinstance(pairs[0]["prompt"], str):
        return pairs
    chat = chat_format(tokenizer)
    return pairs.map(lambda row: {"chosen": chat.prepare(row["prompt"] + row["chosen"]),
                                  "rejected": chat.prepare(row["prompt"] + row["rejected"])},
                     remove_columns=["prompt"], desc="Preparing scored pairs")


def unpaired_rows(ds, fmt: str, settings, tokenizer):
    """KTO: one row per reply, rendered as SFT and the evaluator render them."""
    return render_unpaired(to_unpaired(ds, fmt), tokenizer)


def prompt_rows(ds, fmt: str, settings, tokenizer):
    """GRPO: prompts as messages, system turns folded first where the template wants (TRL renders them)."""
    chat = chat_format(tokenizer)
    return to_prompts(ds, fmt).map(lambda row: {"prompt": chat.prepare(row["prompt"])})


# the method table's ``rows`` -> the conversion: (canonical rows, format, DataSettings, tokenizer) -> the trainer's rows
CONVERSIONS = {"conversations": conversation_rows, "pairs": pair_rows, "pair_ids": pair_ids,
               "scored_pairs": scored_pairs, "unpaired": unpaired_rows, "prompts": prompt_rows}
