"""Reply loss: mean token NLL of a reply given its prompt, scored in padded, length-sorted batches.

The reply's tokens are exactly those SFT puts loss on (chat_format's spans of the last
assistant turn): the reply text plus its end-of-turn token, after the prompt rendered as training
renders it (TRL's generation-tagged twin of the chat template where one exists). Only those positions go through the
LM head, then through the model's own output transform (``evaluate.logits``): full-vocabulary logits are never built
for prompt or padding tokens. A model whose forward does more than the transform knows is scored through that forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..console import bar
from ..errors import warn
from ..fast.kv_head import (MIN_SHARED, head_cache, read_through, rope_varies, shared_head, takes_kv_cache,
                            window_reached)
from ..fast.fit import rows_that_fit
from ..fast.packing import attention_masks, attention_only
from ..templates import chat_format
from .logits import checked_transform


def encode_pairs(tokenizer, items: list[tuple[list[dict], list[dict]]]) -> list[dict]:
    chat = chat_format(tokenizer)
    return [chat.encode(prompt + reply, last_only=True) for prompt, reply in items]


def pack(tokenizer, prompt: list[dict], replies: list[list[dict]]) -> dict:
    """One row: the prompt's tokens once, then each reply's tokens; each reply sees only the prompt.

    Returns ids, position ids, the segment of every token (-1 prompt, k reply k), and for every loss
    token the position whose hidden state predicts it (a reply's first token is predicted from the
    prompt's last token, not from the previous reply)."""
    encoded = encode_pairs(tokenizer, [(prompt, reply) for reply in replies])
    starts = [enc["assistant_masks"].index(1) if 1 in enc["assistant_masks"] else len(enc["input_ids"])
              for enc in encoded]
    prefix = encoded[0]["input_ids"][: starts[0]]
    if any(enc["input_ids"][:start] != prefix for enc, start in zip(encoded, starts)):
        raise ValueError("prompt tokens differ between replies")
    ids, positions, segments, predictors, targets = list(prefix), list(range(len(prefix))), [-1] * len(prefix), [], []
    for k, (enc, start) in enumerate(zip(encoded, starts)):
        offset = len(ids)
        tail = enc["input_ids"][start:]
        for j, (token, loss) in enumerate(zip(tail, enc["assistant_masks"][start:])):
            if loss:
                predictors.append(offset + j - 1 if j else len(prefix) - 1)
                targets.append(offset + j)
        ids += tail
        positions += range(start, start + len(tail))
        segments += [k] * len(tail)
    return {"ids": ids, "positions": positions, "segments": segments, "predictors": predictors,
            "targets": targets, "replies": len(replies)}


def positions_pad(rows: list[dict], width: int) -> torch.Tensor:
    """(batch, width) boolean: True at the right padding of each row."""
    return torch.arange(width)[None, :] >= torch.tensor([len(r["ids"]) for r in rows])[:, None]


def scored_head(model, rows: list[dict]) -> int:
    """Prompt tokens every packed row of the batch starts with (0: not worth sharing). A sliding window must hold
    the whole head: the mask applies the window to the rest, but a sliding layer's cache keeps only the window."""
    if len(rows) < 2:
        return 0
    head = shared_head([row["ids"][: row["segments"].count(-1)] for row in rows])
    if window_reached(model, head + 1):
        head = model.config.get_text_config().sliding_window - 1
    return head if head >= MIN_SHARED else 0


def queries_from(mask: torch.Tensor | dict, head: int) -> torch.Tensor | dict:
    """The 4D mask's rows for the queries after the shared head (its keys stay: the head's are in the cache)."""
    if isinstance(mask, dict):
        return {kind: queries_from(m, head) for kind, m in mask.items()}
    return mask[:, :, head:] if head else mask


@torch.inference_mode()
def score_replies(model, tokenizer, items: list[tuple[list[dict], list[list[dict]]]], batch_size: int = 16,
                  desc: str = "Scoring") -> list[list[tuple[float, int]]]:
    """For each (prompt, [reply, ...]): the (summed NLL, token count) of every reply, in input order.

    Replies that share a prompt are packed into one row, so the prompt is computed once; rows are
    length-sorted and right-padded into batches, and the head a batch's prompts share (the chat template's system
    turn, say) is computed once for the batch (`kv_head`; not with rotary embeddings whose frequencies depend on the
    row's length). Models with layers other than attention get one reply a row and no shared head; a model whose
    output transform the scorer does not know (``evaluate.logits``) gets one reply a row, alone in its batch, through
    its own forward with a plain mask."""
    if not items:
        return []
    transform = checked_transform(model, pack(tokenizer, items[0][0], items[0][1][:1])["ids"], desc.split(":")[0])
    shared_prompt = attention_only(model) and transform is not None
    if not shared_prompt and any(len(replies) > 1 for _, replies in items):
        flat = score_replies(model, tokenizer, [(p, [r]) for p, replies in items for r in replies], batch_size, desc)
        it = iter(flat)
        return [[next(it)[0] for _ in replies] for _, replies in items]
    packed = [pack(tokenizer, prompt, replies) for prompt, replies in items]
    if transform is None:
        batch_size = 1
    order = sorted(range(len(packed)), key=lambda i: len(packed[i]["ids"]))
    results: list[list[tuple[float, int]]] = [[] for _ in packed]
    device = next(model.parameters()).device  # the inputs' (the embeddings'); with device_map="auto" the decoder's
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()  # output may be on another GPU
    share_head = shared_prompt and takes_kv_cache(decoder) and not rope_varies(model)
    batches = rows_that_fit(model, [len(packed[i]["ids"]) for i in order], batch_size,
                            kept_logits=[len(packed[i]["targets"]) for i in order])
    for batch in bar(batches, desc=desc, unit="batch", leave=False):
        rows = [packed[order[k]] for k in batch]
        width = max(len(r["ids"]) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row["ids"])] = torch.tensor(row["ids"])
            positions[b, : len(row["ids"])] = torch.tensor(row["positions"])
        batch_index = torch.tensor([b for b, row in enumerate(rows) for _ in row["targets"]])
        predictors = torch.tensor([p for row in rows for p in row["predictors"]])
        labels = ids[batch_index, torch.tensor([t for row in rows for t in row["targets"]])]
        ids, positions = ids.to(device), positions.to(device)
        mask = attention_masks(model, rows, width, device) if shared_prompt \
            else (~positions_pad(rows, width)).long().to(device)
        shared = scored_head(model, rows) if share_head else 0
        cache = read_through(head_cache(decoder, ids, shared, len(rows), position_ids=positions[:1, :shared])) \
            if shared else None
        predictors = predictors - shared
        if transform is None:  # one reply, one row: its own forward keeps only the predicting positions' logits
            logits = model(input_ids=ids, position_ids=positions, attention_mask=mask,
                           logits_to_keep=predictors.to(device)).logits[0].float()
        else:  # only loss positions go through the LM head: no full-vocabulary logits for prompt or padding
            hidden = decoder(input_ids=ids[:, shared:], position_ids=positions[:, shared:], cache=cache,
                             attention_mask=queries_from(mask, shared)).last_hidden_state
            logits = transform(lm_head(hidden[batch_index.to(hidden.device), predictors.to(hidden.device)]).float())
        nll = F.cross_entropy(logits, labels.to(logits.device), reduction="none").double().cpu()
        at = 0
        for i, row in zip((order[k] for k in batch), rows):
            segment_of = [row["segments"][t] for t in row["targets"]]
            chunk = nll[at: at + len(row["targets"])]
            at += len(row["targets"])
            results[i] = [(float(chunk[[s == k for s in segment_of]].sum()), segment_of.count(k))
                          for k in range(row["replies"])]
    return results


def reply_nll(model, tokenizer, items: list[tuple[list[dict], list[dict]]], batch_size: int = 16,
              desc: str = "Scoring") -> list[tuple[float, int]]:
    """(summed NLL, token count) of each (prompt messages, reply messages) item, in input order."""
    return [scored[0] for scored in score_replies(model, tokenizer, [(p, [r]) for p, r in items], batch_size, desc)]


def mean_loss(scored: list[tuple[float, int]]) -> list[float]:
    """Per-item mean token NLL."""
    return [total / count if count else float("nan") for total, count in scored]


def token_weighted(scored: list[tuple[float, int]]) -> float:
    tokens = sum(count for _, count in scored)
    return sum(total for total, _ in scored) / tokens if tokens else float("nan")


def preference_metrics(chosen: list[float], rejected: list[float]) -> dict:
    """Pairs where the chosen reply has the lower mean loss; ties and pairs with a NaN loss count as wrong.
    The average losses and their margin are over the pairs whose two losses are numbers (``preference_unscored``
    counts the others)."""
    total = len(chosen)
    correct = sum(c < r for c, r in zip(chosen, rejected))
    scored = [(c, r) for c, r in zip(chosen, rejected) if not (math.isnan(c) or math.isnan(r))]
    if len(scored) < total:
        warn(f"{total - len(scored)} of {total} preference pairs have a NaN loss (a reply with no scored tokens, or "
             "a model that overflows); they count as wrong and are left out of the average losses")
    avg_chosen = sum(c for c, _ in scored) / len(scored) if scored else None
    avg_rejected = sum(r for _, r in scored) / len(scored) if scored else None
    return {
        "preference_correct": correct, "preference_total": total,
        "preference_accuracy": correct / total if total else None,
        "avg_chosen_loss": avg_chosen, "avg_rejected_loss": avg_rejected,
        "loss_margin": avg_rejected - avg_chosen if scored else None,
        "preference_unscored": total - len(scored),
    }
