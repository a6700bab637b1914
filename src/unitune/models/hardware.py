"""Where and how a run trains: the device, the compute dtype, QLoRA or LoRA, checkpointing, and why (printed once)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError, warn
from ..machine import uses_deepspeed


@dataclass(frozen=True)
class Hardware:
    """Where and how the model is trained, and why (printed once at start)."""

    device: str
    dtype: torch.dtype
    qlora: bool
    gradient_checkpointing: bool
    reason: str

    def line(self) -> str:
        quant = "4-bit NF4 QLoRA" if self.qlora else "LoRA, full-precision base"
        return f"unitune: device={self.device} dtype={str(self.dtype).removeprefix('torch.')} {quant} ({self.reason})"


def choose_hardware(use_qlora: str, dtype: str = "auto") -> Hardware:
    """Defaults by hardware: QLoRA + bf16 on CUDA; LoRA without checkpointing on CPU, in fp32 unless this CPU runs
    bf16 natively and measured it faster (models.precision). ``dtype`` float32/bfloat16 overrides the choice."""
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        qlora = use_qlora != "false"
        reason = "CUDA: 4-bit base saves memory" if qlora else "CUDA, --use_qlora false"
        if dtype == "bfloat16" and not bf16:
            raise UserError("--dtype bfloat16: this GPU has no bf16; use --dtype auto (fp16) or float32")
        if dtype != "auto":
            return Hardware("cuda", getattr(torch, dtype), qlora, True, f"{reason}; --dtype {dtype}")
        return Hardware("cuda", torch.bfloat16 if bf16 else torch.float16, qlora, True,
                        reason + ("; bf16 supported" if bf16 else "; no bf16 on this GPU, fp16"))
    qlora = use_qlora == "true"
    from .precision import cpu_dtype, native_bf16

    if uses_deepspeed():
        # DeepSpeed's bf16 casts the weights (and the adapter) to bf16; unitune's CPU bf16 is autocast over fp32
        # weights with fp32 adapters, and the two together fail on the first matmul (float != BFloat16).
        if dtype == "bfloat16":
            raise UserError("--dtype bfloat16 is not supported with DeepSpeed on CPU processes (DeepSpeed's bf16 casts "
                            "the weights, unitune's CPU bf16 keeps them fp32); drop --dtype, or use --dtype float32")
        chosen, why = torch.float32, "DeepSpeed on CPU processes: fp32"
    elif dtype == "auto":
        chosen, why = cpu_dtype()
    else:
        chosen, why = getattr(torch, dtype), f"--dtype {dtype}"
        if chosen == torch.bfloat16 and not native_bf16():
            warn("--dtype bfloat16 on a CPU without native bf16 (no avx512_bf16/AMX): torch emulates it, many times "
                 "slower than fp32; --dtype auto picks fp32 here")
    # Gradient checkpointing costs ~20% on CPU and memory is rarely short there (measured: docs/methods.md).
    autocast = ("" if chosen != torch.bfloat16 else "; bf16 autocast, 4-bit base and bf16 adapter" if qlora
                else "; bf16 autocast, weights and adapter fp32")
    reason = f"CPU: {why}{autocast}; no gradient checkpointing"
    if qlora:
        reason += "; --use_qlora true forces 4-bit bitsandbytes on CPU"
    return Hardware("cpu", chosen, qlora, False, reason)
