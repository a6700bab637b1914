"""Rows that hold several replies behind one copy of their prompt: which models allow it, and their attention masks.

The evaluator's scorer packs a prompt's replies (chosen and rejected) into one row, and GRPO's log-prob pass packs a
prompt's completions; each reply sees the prompt and itself through a 4D mask built here.
"""

from __future__ import annotations

import torch


def _allowed(rows: list[dict], width: int, window: int | None = None) -> torch.Tensor:
    """(batch, 1, width, width) boolean: causal, prompt visible to all, replies blind to each other, and with
    ``window`` only keys fewer than ``window`` positions back (sliding-window layers)."""
    allowed = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for b, row in enumerate(rows):
        n = len(row["ids"])
        seg = torch.tensor(row["segments"])
        same = (seg[:, None] == seg[None, :]) | (seg[None, :] == -1)
        allowed[b, 0, :n, :n] = same & causal[:n, :n]
        if window:
            pos = torch.tensor(row["positions"])
            allowed[b, 0, :n, :n] &= (pos[:, None] - pos[None, :]) < window
        allowed[b, 0, n:, :] = causal[n:, :]  # padding rows attend causally (ignored, avoids empty rows)
    return allowed


ATTENTION_LAYERS = {"full_attention", "sliding_attention"}


def attention_only(model) -> bool:
    """Replies can share a prompt in one row only when every layer is attention a 4D mask steers: convolution,
    linear-attention and state-space layers (LFM2, Qwen3.5, Nemotron-H) would carry one reply into the next."""
    layer_types = getattr(model.config.get_text_config(), "layer_types", None) or []  # absent: all attention
    return set(layer_types) <= ATTENTION_LAYERS


def attention_masks(model, rows: list[dict], width: int, device) -> torch.Tensor | dict:
    """The packed rows' 4D mask in the form the model's attention adds to its scores: 0 where a query may look,
    the dtype's minimum elsewhere (eager attention adds the mask; a boolean one would add 0/1). Models with
    sliding-window layers get the window too: one mask per layer type where the config names them (Gemma-2/3,
    Qwen2), as the model's own forward builds them."""
    config = model.config.get_text_config()
    dtype = next(model.parameters()).dtype

    def additive(allowed):
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min).to(device)

    layer_types = getattr(config, "layer_types", None)  # absent on architectures without per-layer kinds
    if not layer_types:  # Mistral, Phi-3: one window (or none) for every layer
        return additive(_allowed(rows, width, getattr(config, "sliding_window", None)))
    return {kind: additive(_allowed(rows, width, config.sliding_window if kind == "sliding_attention" else None))
            for kind in set(layer_types)}
