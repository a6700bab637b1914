"""CPU bf16 done right: ``--dtype auto`` picks bf16 autocast only where this machine runs it natively, a short probe
measured it faster and its numbers matched fp32's, and under autocast the LoRA adapter stays fp32.

CPUs differ: without avx512_bf16 or AMX, torch emulates bf16 matmuls (here ~130x slower than fp32), so the probe is
not even run. With them, it times a LoRA-sized MLP block (forward and backward, 2048 tokens) in fp32 and under bf16
autocast, and checks parity: the block's output and gradients under autocast must be within ``PARITY_LIMIT`` of
fp32's (relative error; measured 0.3-0.5% on an EPYC with avx512_bf16). It runs once per machine (``fast.probes``:
kept 30 days, refused when the machine was busy, and then fp32). Under autocast, PEFT's LoRA branch would run in
bf16 and be added to the bf16 base output, where a small update rounds away (TRL's bf16 learned 6-8% slower than fp32
on a native-bf16 EPYC): ``fp32_adapters`` runs the adapter's matmuls in fp32, hands the base output over in fp32, and
keeps their sum fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fast import probes
from ..machine import cpu_info

NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
MIN_GAIN = 1.1  # bf16 must beat fp32 by 10%: less is within the probe's noise
PARITY_LIMIT = 0.02  # bf16 autocast's output and gradients at most 2% (relative) from fp32's: measured 0.3-0.5%


def native_bf16() -> bool:
    return bool(cpu_info()[1] & set(NATIVE_BF16))


def probe_file():
    return probes.probe_file("dtype")


def _block(tokens: int, hidden: int, inner: int, weights_grad: bool = False):
    torch.manual_seed(0)
    x = torch.randn(tokens, hidden, requires_grad=True)
    up, down = torch.randn(inner, hidden) / hidden**0.5, torch.randn(hidden, inner) / inner**0.5
    return x, up.requires_grad_(weights_grad), down.requires_grad_(weights_grad)


def _forward(x, up, down, bf16: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return torch.nn.functional.silu(x @ up.T) @ down.T


def block_seconds(bf16: bool, tokens: int = 2048, hidden: int = 576, inner: int = 1536, repeats: int = 5) -> float:
    """Median seconds of a forward and backward pass through an MLP block, in fp32 or under bf16 autocast."""
    x, up, down = _block(tokens, hidden, inner)
    return probes.median_seconds(lambda: _forward(x, up, down, bf16).float().sum().backward(), repeats)


def parity(tokens: int = 2048, hidden: int = 576, inner: int = 1536) -> dict:
    """How far the MLP block under bf16 autocast is from fp32: the largest relative error (Frobenius norm) of its
    output and of the gradients of its input and both weights, and whether that is within ``PARITY_LIMIT``."""
    seen = {}
    for bf16 in (False, True):
        x, up, down = _block(tokens, hidden, inner, weights_grad=True)
        out = _forward(x, up, down, bf16).float()
        out.pow(2).mean().backward()
        seen[bf16] = [out.detach(), x.grad, up.grad, down.grad]
    error = max(float((b - a).norm() / a.norm()) for a, b in zip(seen[False], seen[True]))
    return {"rel_error": error, "limit": PARITY_LIMIT, "passed": error <= PARITY_LIMIT}  # NaN fails


def measure() -> dict:
    fp32, bf16, check = block_seconds(False), block_seconds(True), parity()
    return {"fp32_s": fp32, "bf16_s": bf16, "parity": check, "bf16": fp32 / bf16 >= MIN_GAIN and check["passed"]}


def valid(found: dict) -> bool:
    """Whether a kept probe has every field ``cpu_dtype`` reads (an older or partial file is measured again)."""
    check = found.get("parity")
    return (all(isinstance(found.get(k), (int, float)) and found[k] > 0 for k in ("fp32_s", "bf16_s"))
            and isinstance(found.get("bf16"), bool) and isinstance(check, dict)
            and isinstance(check.get("rel_error"), (int, float)) and isinstance(check.get("passed"), bool))


def cpu_dtype() -> tuple[torch.dtype, str]:
    """The CPU training dtype for `--dtype auto`, and why (for the plan line and the run record's hardware.reason)."""
    if not native_bf16():
        return torch.float32, "no native bf16 (no avx512_bf16/AMX), fp32"
    found, where = probes.cached("dtype", measure, valid)
    if found is None:
        return torch.float32, f"native bf16, but {where}, so fp32 (the safe default)"
    ratio, check = found["fp32_s"] / found["bf16_s"], found["parity"]
    matched = f"{check['rel_error']:.2%} from fp32, limit {PARITY_LIMIT:.0%}"
    if not check["passed"]:
        return torch.float32, f"native bf16, but autocast failed the parity check ({matched}), so fp32 ({where})"
    if found["bf16"]:  # faster by MIN_GAIN and within the parity limit (measure)
        return torch.bfloat16, (f"native bf16, autocast ran {ratio:.2f}x fp32 and passed the parity check ({matched}) "
                                f"({where})")
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
