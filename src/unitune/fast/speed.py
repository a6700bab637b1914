"""Speed-ups unitune applies on top of TRL and PEFT, each measured in bench/ (see bench/RESULTS.md).

- ``compact_lm_head``: TRL's fused LM head projects only the positions that carry a loss, but only where
  Triton runs (CUDA/XPU). On CPU it scores every position, prompt and padding included, against the full
  vocabulary. We let it take the compact path on CPU too (same kernel, fewer rows).
- ``lora_merged``: generating through unmerged LoRA layers runs three extra small matmuls (and a dropout) per
  layer and token. While GRPO samples, each layer's base weight is swapped for a merged copy and the LoRA branch is
  skipped; the original weight tensors are put back afterwards, so training continues on the exact same bits.
- ``shared_prefill``: GRPO samples ``num_generations`` completions per prompt from rows that repeat the prompt.
  Each distinct prompt is prefilled once; its KV cache is copied to the rows that repeat it, and ``generate``
  continues from there.
- ``fp32_adapters``: under CPU bf16 autocast, PEFT's LoRA branch would run in bf16 and be added to the bf16 base
  output, where a small update rounds away (TRL's bf16 learned 6-8% slower than fp32 on a native-bf16 EPYC). The
  adapter's matmuls run in fp32 instead, the base output is handed over in fp32, and their sum stays fp32.
- ``FastDropout``: PEFT's LoRA dropout is ``nn.Dropout``, whose mask costs one call to the CPU random
  generator per element, about a sixth of a CPU LoRA step. We draw 16 random bits per element from
  64-bit words (four elements per call) and keep a 1-byte mask for the backward pass.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import UserError

_BITS = 16  # random bits per element: the drop probability is rounded to a multiple of 2**-16


TESTED_TRL = "1.16.0"  # compact_lm_head replaces a private TRL function: only the version it was measured on


@contextlib.contextmanager
def compact_lm_head(device: str = "cpu"):
    """While the block runs, TRL's fused LM head skips positions without a label on CPU too; restored after.
    Elsewhere TRL already takes the compact path: nothing to patch."""
    import trl
    import trl.trainer.utils as trl_utils

    if device != "cpu":
        yield
        return
    if trl.__version__.split("+")[0] != TESTED_TRL:
        raise UserError(f"unitune's CPU speed-up was measured on trl {TESTED_TRL}, found trl {trl.__version__}; "
                        f"install trl=={TESTED_TRL} (`pip install trl=={TESTED_TRL}`)")
    original = trl_utils._use_triton

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    trl_utils._use_triton = compact
    try:
        yield
    finally:
        trl_utils._use_triton = original


@contextlib.contextmanager
def lora_merged(model: nn.Module):
    """While the block runs, every plain LoRA layer with a float base weight computes ``x @ (W + scale * B @ A)`` in
    one matmul: a merged copy of ``W`` stands in, and PEFT's forward takes its merged path. Afterwards the original
    ``W`` tensors are put back (not re-computed by subtraction, which would drift). Layers it cannot merge exactly
    (4-bit bases, DoRA and other variants, LoRA biases, already merged) keep their LoRA branch. Yields how many
    layers were merged. For no-grad use only: nothing trains through the merged copies."""
    from peft.tuners.lora import LoraLayer

    swapped = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if not isinstance(module, LoraLayer) or module.merged:
                    continue
                base = module.get_base_layer()
                adapters = [a for a in module.active_adapters if a in module.lora_A]
                if (not adapters or not isinstance(base, nn.Linear) or not base.weight.dtype.is_floating_point
                        or any(a in module.lora_variant or module.lora_bias[a] for a in adapters)):
                    continue
                weight = base.weight.data
                merged = weight.clone()
                for adapter in adapters:
                    merged += module.get_delta_weight(adapter).to(weight.dtype)
                base.weight.data = merged
                module.merged_adapters = list(adapters)
                swapped.append((module, base, weight))
        yield len(swapped)
    finally:
        for module, base, weight in swapped:
            base.weight.data = weight
            module.merged_adapters = []


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
    from ..evaluate.scoring import packable

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not packable(model) or not takes_cache(inner):
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


class Fp32Linear(nn.Linear):
    """An ``nn.Linear`` that runs in fp32 even inside an autocast region (a LoRA A or B matrix)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class Fp32OutputLinear(nn.Linear):
    """An ``nn.Linear`` that computes as autocast says (bf16) and returns fp32 (a LoRA layer's frozen base): PEFT adds
    the adapter's output to it and casts the sum to the base output's dtype, which then stays fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).float()


def fp32_adapters(model: nn.Module) -> int:
    """Make every LoRA A/B matrix an ``Fp32Linear`` and every LoRA layer's base an ``Fp32OutputLinear`` (same modules,
    weights and state dict): the adapter and its sum with the base output stay fp32 under autocast. Returns how many
    adapter matrices it changed."""
    from peft.tuners.lora import LoraLayer

    swapped = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        if type(module.get_base_layer()) is nn.Linear:
            module.get_base_layer().__class__ = Fp32OutputLinear
        for layers in (module.lora_A, module.lora_B):
            for layer in layers.values():
                if type(layer) is nn.Linear:
                    layer.__class__ = Fp32Linear
                    swapped += 1
    return swapped


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Boolean mask, each element True with probability 1 - p (p rounded to a multiple of 2**-16)."""
    n = shape.numel()
    words = torch.empty((n * _BITS + 63) // 64, dtype=torch.int64, device=device)
    words.random_(-(2**63), None)  # the full 64-bit range: every bit uniform
    draws = words.view(torch.int16)[:n].view(shape)  # uniform on [-2**15, 2**15)
    return draws >= round(p * 2**_BITS) - 2**15


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        keep = keep_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on CPU; identical behaviour in eval mode and on other devices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        return _Dropout.apply(x, self.p)


def fast_lora_dropout(model: nn.Module, p: float) -> int:
    """Swap PEFT's LoRA ``nn.Dropout`` modules for ``FastDropout``; returns how many were swapped. With a dropout
    (``p`` > 0) and nothing found to swap, PEFT has changed where it keeps them: say so rather than run slower."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, layer in list(dropouts.items()):
            if type(layer) is nn.Dropout:
                dropouts[name] = FastDropout(layer.p)
                swapped += 1
    if p > 0 and not swapped:
        import peft

        raise UserError(f"found no LoRA dropout layers to speed up in peft {peft.__version__}; install the tested "
                        "peft (see pyproject.toml)")
    return swapped
