"""The head every row of a batch starts with, computed once.

Chat prompts share a head: the template's system turn, often an instruction. Its KV cache is computed for one row
and copied to every row, which then computes only its own rest. Used by greedy generation (`fast/generation.py`) and
by reply scoring (`evaluate/scoring.py`).
"""

from __future__ import annotations

import functools
import inspect

import torch

MIN_SHARED = 8  # shorter shared heads are not worth a separate forward


def takes_kv_cache(module) -> bool:
    """Whether the module's forward takes a KV cache as ``cache``, as transformers 5's models do (older remote code
    does not)."""
    return "cache" in inspect.signature(module.forward).parameters


def shared_head(rows: list[list[int]]) -> int:
    """Tokens all rows start with, leaving each row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def window_reached(model, tokens: int) -> bool:
    """Whether a sliding-window layer's window is shorter than ``tokens``. Generation slides the window over the
    padded row, and a sliding layer's cache keeps only the window: sharing a head is not exact there."""
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None)
    return bool(window) and (not kinds or "sliding_attention" in kinds) and window < tokens


def rope_varies(model) -> bool:
    """Whether a rotary embedding picks its frequencies per forward from the longest position (dynamic NTK, LongRoPE):
    a head computed alone would get other frequencies than the rest of its row."""
    for module in model.modules():
        kind = getattr(module, "rope_type", None)
        kinds = kind.values() if isinstance(kind, dict) else [kind]
        if any(isinstance(k, str) and ("dynamic" in k or k == "longrope") for k in kinds):
            return True
    return False


def head_cache(model, ids, head: int, rows: int, **inputs):
    """The KV cache of the shared head (``ids[:1, :head]``), computed once and copied to ``rows`` rows. ``model``
    may be a causal LM or its decoder; ``inputs`` go to its forward (position ids, say)."""
    cache = model(input_ids=ids[:1, :head], use_cache=True, **inputs).cache
    cache.batch_repeat_interleave(rows)
    return cache


def read_through(cache):
    """Make the cache's dynamic (and sliding-window) layers hand back the head's keys and values with the new tokens'
    without keeping the new ones: a scoring forward reads them once, and keeping every layer's for the whole batch
    until the forward ends would cost their size in memory again. Returns the cache."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    for layer in getattr(cache, "layers", []):
        if type(layer) in (DynamicLayer, DynamicSlidingWindowLayer):  # the head is within a sliding window (scoring)
            layer.update = functools.partial(_head_with, layer)
    return cache


def _head_with(layer, key_states, value_states, *args, **kwargs):
    return torch.cat([layer.keys, key_states], -2), torch.cat([layer.values, value_states], -2)
