"""Batched greedy generation with the KV cache (evaluation, GRPO samples, headroom checks).

Prefilling the prompts is most of an evaluation's generation time (replies are short, prompts are not), and chat
prompts share a head: the template's system turn, often an instruction. The tokens every prompt of a batch starts
with are computed once and their KV cache is copied to each row; each row then prefills only its own rest, laid out
as [shared head | padding | rest], with the positions its unpadded tokens would have.

Then each step decodes only the rows still running: `generate` runs every row until the batch's longest reply ends,
and at an evaluation's batch sizes a step costs in proportion to its rows. A row leaves the batch (and its KV cache)
at its stop token. Greedy decoding with the model's plain generation config only: a config that asks for logits
processing (repetition penalty, suppressed tokens, a minimum length...) goes to `generate`.
"""

from __future__ import annotations

import inspect

import torch

from ..console import bar
from ..templates import chat_format
from .fit import rows_that_fit
from .kv_head import MIN_SHARED, head_cache, rope_varies, shared_head, takes_kv_cache, window_reached
from .packed_linear import packed_linears
from .packing import attention_only


def takes_cache(model) -> bool:
    """Whether the model's forward takes a KV cache (``cache``) and ``logits_to_keep``, as transformers 5's models do;
    others (older remote code) are left to ``generate``."""
    return takes_kv_cache(model) and "logits_to_keep" in inspect.signature(model.forward).parameters


def generate_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded (or head | padding | rest) rows as ``generate`` gives them: real tokens counted
    from 0; padding gets a dummy position (its keys are masked)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def batch_inputs(rows: list[list[int]], head: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask): the shared head, then each row's rest left-padded (head 0: plain left padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        rest = row[head:]
        ids[b, :head], mask[b, :head] = torch.tensor(row[:head], dtype=torch.long), 1
        ids[b, width - len(rest):], mask[b, width - len(rest):] = torch.tensor(rest, dtype=torch.long), 1
    return ids, mask


# GenerationConfig fields that make `generate` process the logits before its argmax
PROCESSING = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
              "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id", "min_length",
              "min_new_tokens", "sequence_bias", "exponential_decay_length_penalty", "diversity_penalty",
              "renormalize_logits", "watermarking_config", "max_time", "stop_strings")


def plain_greedy(generation_config) -> bool:
    from transformers import GenerationConfig

    default = GenerationConfig()
    return all(getattr(generation_config, k, None) in (None, getattr(default, k, None)) for k in PROCESSING)


def greedy(model, ids: torch.Tensor, mask: torch.Tensor, cache, max_new_tokens: int,
           stop: list[int]) -> list[list[int]]:
    """Greedy tokens of each row, up to and with its stop token; finished rows leave the batch."""
    replies: list[list[int]] = [[] for _ in range(len(ids))]
    running = torch.arange(len(ids))
    positions = generate_positions(mask)
    done = cache.get_seq_length() if cache is not None else 0
    out = model(input_ids=ids[:, done:], attention_mask=mask, position_ids=positions[:, done:], cache=cache,
                use_cache=True, logits_to_keep=1)
    following = positions[:, -1] + 1
    stops = torch.tensor(stop, device=ids.device)
    for step in range(max_new_tokens):
        tokens = out.logits[:, -1].argmax(-1)
        for row, token in zip(running.tolist(), tokens.tolist()):
            replies[row].append(token)
        going = ~torch.isin(tokens, stops)
        if step == max_new_tokens - 1 or not going.any():
            break
        cache = out.cache
        if not going.all():
            keep = going.nonzero().squeeze(1)
            running, tokens, mask, following = running[keep.cpu()], tokens[keep], mask[keep], following[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones((len(mask), 1))], 1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=following[:, None], cache=cache,
                    use_cache=True)
        following = following + 1
    return replies


@torch.inference_mode()
def generate_replies(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 64,
                     batch_size: int = 16, desc: str | None = "Generating") -> list[str]:
    """Greedy replies to chat prompts, in input order (see generate_ids). ``desc`` None: no progress bar (another rank
    shows it)."""
    chat = chat_format(tokenizer)
    encoded = [tokenizer(chat.generation_prompt(p), add_special_tokens=False)["input_ids"] for p in prompts]
    return [tokenizer.decode(seq, skip_special_tokens=True).strip()
            for seq in generate_ids(model, tokenizer, encoded, max_new_tokens, batch_size, desc)]


@torch.inference_mode()
def generate_ids(model, tokenizer, encoded: list[list[int]], max_new_tokens: int = 64, batch_size: int = 16,
                 desc: str | None = "Generating") -> list[list[int]]:
    """The greedy token ids after each of the ``encoded`` prompts, in input order, up to and with the stop token.
    Prompts are length-sorted into left-padded batches; the head a batch's prompts share is computed once and
    finished rows leave the batch (not for models with layers other than attention, a forward that takes no
    ``cache``, or rotary embeddings whose frequencies depend on the longest position; no shared head where a sliding
    window is shorter than the rows)."""
    chat = chat_format(tokenizer)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    replies: list[list[int]] = [[] for _ in encoded]
    device = next(model.parameters()).device
    share = attention_only(model) and takes_cache(model) and not rope_varies(model)
    own_loop = share and plain_greedy(model.generation_config)
    stop = chat.stop_ids(model.generation_config)
    with packed_linears(model):
        batches = rows_that_fit(model, [len(encoded[i]) for i in order], batch_size, max_new_tokens, kept_logits=1)
        for batch in bar(batches, desc=desc, unit="batch", disable=desc is None):
            idx = [order[k] for k in batch]
            rows = [encoded[i] for i in idx]
            head = shared_head(rows) if share and len(rows) > 1 else 0
            if head < MIN_SHARED or window_reached(model, max(map(len, rows)) + max_new_tokens):
                head = 0
            ids, mask = (t.to(device) for t in batch_inputs(rows, head, tokenizer.pad_token_id))
            cache = head_cache(model, ids, head, len(rows)) if head else None
            if own_loop:
                out = greedy(model, ids, mask, cache, max_new_tokens, stop)
            else:
                out = model.generate(input_ids=ids, attention_mask=mask, cache=cache, max_new_tokens=max_new_tokens,
                                     do_sample=False, use_cache=True, eos_token_id=stop,
                                     pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None,
                                     top_k=None)[:, ids.shape[1]:].tolist()
            for i, seq in zip(idx, out):
                ends = [k for k, token in enumerate(seq) if token in stop]
                replies[i] = seq[:ends[0] + 1] if ends else seq  # generate pads a row that stopped early
    return replies
