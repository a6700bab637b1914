"""The head every row of a batch starts with, computed once.

Chat prompts share a head: the template's system turn, often an instruction. Its KV cache is computed for one row
and copied to every row, which then computes only its own rest. Used by greedy generation (`generation.py`) and
by reply scoring (`scoring.py`).
"""

from __future__ import annotations

import inspect

MIN_SHARED = 8  # shorter shared heads are not worth a separate forward


def takes_cache(module) -> bool:
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


def head_cache(model, ids, head: int, rows: int, **inputs):
    """The KV cache of the shared head (``ids[:1, :head]``), computed once and copied to ``rows`` rows. ``model``
    may be a causal LM or its decoder; ``inputs`` go to its forward (position ids, say)."""
    cache = model(input_ids=ids[:1, :head], use_cache=True, **inputs).cache
    cache.batch_repeat_interleave(rows)
    return cache
