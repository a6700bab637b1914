"""Batches that fit the memory there is: the evaluator's scoring and generation split a batch whose estimated peak
would not fit half of what is free (on CPU within the container's limit, on GPU the device's free memory).

The estimate is deliberately high: one layer's activations, the attention scores and masks materialised in full (as
eager attention and a masked CPU sdpa do), the KV cache of every layer and the logits that are kept.
"""

from __future__ import annotations

import torch

from ..machine import available_memory

SHARE = 0.5  # of the free memory, for one batch's transient tensors: the rest is headroom


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":  # what the driver has free, and what torch holds in its cache but does not use
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - \
            torch.cuda.memory_allocated(device)
    return available_memory()


def row_bytes(model, width: int, new_tokens: int = 0, kept_logits: int | None = None) -> int:
    """The estimated peak bytes one row of ``width`` tokens adds to a forward (and, with ``new_tokens``, to a
    generation: its KV cache grows by them); ``kept_logits`` positions go through the LM head (default: all)."""
    config = model.config.get_text_config()
    hidden = config.hidden_size
    inner = getattr(config, "intermediate_size", None) or 4 * hidden
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    size = torch.finfo(next(model.parameters()).dtype).bits // 8 if next(model.parameters()).is_floating_point() else 2
    length = width + new_tokens
    activations = width * (4 * hidden + 3 * inner) * size
    attention = width * length * (heads * 4 + 2 * (size + 1))  # fp32 scores, two mask kinds with their booleans
    cache = 2 * config.num_hidden_layers * kv_heads * head_dim * length * size
    logits = (width if kept_logits is None else kept_logits) * config.vocab_size * 4 * 2  # and their softmax
    return activations + attention + cache + logits


def rows_that_fit(model, widths: list[int], batch_size: int, new_tokens: int = 0,
                  kept_logits: int | list[int] | None = None) -> list[list[int]]:
    """``widths`` (token counts in batch order) cut into batches of at most ``batch_size`` rows, fewer where the rows
    are long enough that the batch would not fit (never fewer than one). ``kept_logits``: the positions each row
    (a list, in the same order) or every row (a number) sends through the LM head; None: all."""
    budget = free_memory(next(model.parameters()).device) * SHARE
    kept = kept_logits if isinstance(kept_logits, list) else [kept_logits] * len(widths)
    batches: list[list[int]] = []
    start = 0
    while start < len(widths):
        end = min(start + batch_size, len(widths))
        while end - start > 1 and (end - start) * row_bytes(
                model, max(widths[start:end]), new_tokens,
                None if None in kept[start:end] else max(kept[start:end])) > budget:
            end -= 1
        batches.append(list(range(start, end)))
        start = end
    return batches
