"""`--dtype auto` on CPU: bf16 autocast only where this machine runs it natively and a short probe measured it faster.

CPUs differ: without avx512_bf16 or AMX, torch emulates bf16 matmuls (here ~130x slower than fp32), so the probe is
not even run. With them, it times a LoRA-sized MLP block (forward and backward, 2048 tokens) in fp32 and under bf16
autocast, once per machine: the result is kept in $UNITUNE_HOME/probes, keyed by the CPU model and flags, the
thread count and the torch version. The adapter itself stays fp32 under autocast (speed.fp32_adapters).
"""

from __future__ import annotations

import torch

from ..fast import probes
from ..env import cpu_info

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
