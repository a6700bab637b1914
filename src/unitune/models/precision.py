"""CPU bf16 done right: ``--dtype auto`` picks bf16 autocast only where this machine runs it natively and a short probe
measured it faster, and under autocast the LoRA adapter stays fp32.

CPUs differ: without avx512_bf16 or AMX, torch emulates bf16 matmuls (here ~130x slower than fp32), so the probe is
not even run. With them, it times a LoRA-sized MLP block (forward and backward, 2048 tokens) in fp32 and under bf16
autocast, once per machine (``fast.probes``). Under autocast, PEFT's LoRA branch would run in bf16 and be added to the
bf16 base output, where a small update rounds away (TRL's bf16 learned 6-8% slower than fp32 on a native-bf16 EPYC):
``fp32_adapters`` runs the adapter's matmuls in fp32, hands the base output over in fp32, and keeps their sum fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fast import probes
from ..machine import cpu_info

NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
MIN_GAIN = 1.1  # bf16 must beat fp32 by 10%: less is within the probe's noise


def native_bf16() -> bool:
    return bool(cpu_info()[1] & set(NATIVE_BF16))


def probe_file():
    return probes.probe_file("dtype")


def block_seconds(bf16: bool, tokens: int = 2048, hidden: int = 576, inner: int = 1536, repeats: int = 5) -> float:
    """Median seconds of a forward and backward pass through an MLP block, in fp32 or under bf16 autocast."""
    torch.manual_seed(0)
    x = torch.randn(tokens, hidden, requires_grad=True)
    up, down = torch.randn(inner, hidden) / hidden**0.5, torch.randn(hidden, inner) / inner**0.5

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = torch.nn.functional.silu(x @ up.T) @ down.T
        out.float().sum().backward()

    return probes.median_seconds(step, repeats)


def measure() -> dict:
    fp32, bf16 = block_seconds(False), block_seconds(True)
    return {"fp32_s": fp32, "bf16_s": bf16, "bf16": fp32 / bf16 >= MIN_GAIN}


def cpu_dtype() -> tuple[torch.dtype, str]:
    """The CPU training dtype for `--dtype auto`, and why (for the plan line)."""
    if not native_bf16():
        return torch.float32, "no native bf16 (no avx512_bf16/AMX), fp32"
    found, where = probes.cached("dtype", measure)
    ratio = found["fp32_s"] / found["bf16_s"]
    if found["bf16"]:
        return torch.bfloat16, f"native bf16, autocast ran {ratio:.2f}x fp32 ({where})"
    return torch.float32, f"native bf16, but autocast ran only {ratio:.2f}x fp32, so fp32 ({where})"


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
