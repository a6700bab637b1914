"""Batched greedy generation with the KV cache (evaluation, GRPO samples, headroom checks)."""

from __future__ import annotations

import torch

from .chat_format import chat_format
from .output import bar


@torch.inference_mode()
def generate_replies(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 64,
                     batch_size: int = 16, desc: str | None = "Generating") -> list[str]:
    """Greedy replies to chat prompts, in input order. Prompts are length-sorted into left-padded batches.
    ``desc`` None: no progress bar (another rank shows it)."""
    chat = chat_format(tokenizer)
    texts = [chat.generation_prompt(p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    replies: list[str] = [""] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    try:
        for start in bar(range(0, len(order), batch_size), desc=desc, unit="batch", disable=desc is None):
            idx = order[start: start + batch_size]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 eos_token_id=chat.stop_ids(model.generation_config),
                                 pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
            for i, seq in zip(idx, out[:, batch["input_ids"].shape[1]:]):
                replies[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = side
    return replies
