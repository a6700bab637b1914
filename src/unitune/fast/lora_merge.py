"""GRPO samples through merged LoRA weights.

Generating through unmerged LoRA layers runs three extra small matmuls (and a dropout) per layer and token. While GRPO
samples, each layer's base weight is swapped for a merged copy and the LoRA branch is skipped; the original weight
tensors are put back afterwards, so training continues on the exact same bits.

Not where the weights are sharded (DeepSpeed ZeRO-3, FSDP2): a process holds only a shard of each weight there, and
TRL gathers the whole weight for generation only after a merge would have run, so the gathered weight is the
unmerged one while PEFT skips the LoRA branch as merged (the base model would sample). There the LoRA branch runs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def sharded(model: nn.Module) -> bool:
    """Whether the model's parameters are sharded across processes: DeepSpeed ZeRO-3 marks each parameter it
    manages (``ds_id``, even one it keeps whole), FSDP2 makes them DTensors."""
    from torch.distributed.tensor import DTensor

    return any(hasattr(p, "ds_id") or isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def lora_merged(model: nn.Module):
    """While the block runs, every plain LoRA layer with a float base weight computes ``x @ (W + scale * B @ A)`` in
    one matmul: a merged copy of ``W`` stands in, and PEFT's forward takes its merged path. Afterwards the original
    ``W`` tensors are put back (not re-computed by subtraction, which would drift). Layers it cannot merge exactly
    (4-bit bases, DoRA and other variants, LoRA biases, already merged) keep their LoRA branch. Yields how many
    layers were merged; none where the weights are sharded (see ``sharded``). For no-grad use only: nothing trains
    through the merged copies."""
    from peft.tuners.lora import LoraLayer

    if sharded(model):
        yield 0
        return
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
