"""LoRA dropout with a cheaper mask on CPU.

PEFT's LoRA dropout is ``nn.Dropout``, whose mask costs one call to the CPU random generator per element, about a
sixth of a CPU LoRA step. ``FastDropout`` draws 16 random bits per element from 64-bit words (four elements per call)
and keeps a 1-byte mask for the backward pass; ``fast_lora_dropout`` swaps it into a PEFT model (bench/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

_BITS = 16  # random bits per element: the drop probability is rounded to a multiple of 2**-16


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
