"""GRPO prefills each distinct prompt once.

GRPO samples ``num_generations`` completions per prompt from rows that repeat the prompt. While ``shared_prefill``
runs, each distinct prompt is prefilled once; its KV cache is copied to the rows that repeat it, and ``generate``
continues from there.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

# inputs besides the token ids that a prompt's cache would depend on (images, token types): generate gets them as given
MODEL_INPUTS = ("inputs_embeds", "pixel_values", "pixel_attention_mask", "image_grid_thw", "image_sizes",
                "token_type_ids", "mm_token_type_ids", "image_position_ids")


@contextlib.contextmanager
def shared_prefill(model: nn.Module):
    """While the block runs, ``model.generate`` prefills each distinct prompt row once: the rows' KV cache is
    computed for the distinct rows (all but the last prompt token, with the position ids generate gives them) and
    copied to the repeats, and generate continues from it. Calls it cannot serve (embeddings, images, a cache of
    their own, no repeats, models with layers other than attention) go to generate unchanged."""
    from .generation import generate_positions, takes_cache
    from .packing import attention_only

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not attention_only(model) or not takes_cache(inner):
        yield
        return
    original = model.generate
    own = "generate" in vars(model)  # an instance attribute of its own, put back afterwards

    def generate(*args, input_ids=None, attention_mask=None, **kwargs):
        if (args or input_ids is None or attention_mask is None or input_ids.size(1) < 2
                or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None
                or any(k in kwargs for k in MODEL_INPUTS)):
            return original(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        distinct, inverse = torch.unique(torch.cat([input_ids, attention_mask], 1), dim=0, return_inverse=True)
        if len(distinct) == len(input_ids):
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        # one row of each distinct prompt (the rows that share an inverse index are equal: any one will do)
        first = torch.zeros(len(distinct), dtype=torch.long, device=input_ids.device)
        first.scatter_(0, inverse, torch.arange(len(inverse), device=input_ids.device))
        mask = attention_mask[first, :-1]
        # generate runs the PEFT model's base model, outside the autocast accelerate wraps PeftModel.forward in
        with torch.no_grad():
            cache = inner(input_ids=input_ids[first, :-1], attention_mask=mask, position_ids=generate_positions(mask),
                          use_cache=True, logits_to_keep=1).cache
        cache.batch_select_indices(inverse)
        return original(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        if own:
            model.generate = original
        else:
            del model.generate  # the class's method again
