"""Decode steps on CPU through oneDNN's pre-packed fp32 weights.

A decode step multiplies a few rows (one new token per sequence) by every weight matrix of the model. ``F.linear``
hands that to MKL's sgemm, which lays the weight out afresh on every call and streams it at a fraction of the
memory bandwidth: on a 2-core EPYC, the embedded model's LM head ([8, 576] x [576, 49152]) took 27.5 ms against
7.7 ms through oneDNN with the weight packed once (bench/RESULTS.md). While ``packed_linears(model)`` runs, each fp32
``nn.Linear`` on CPU keeps a oneDNN-packed copy of its weight, and calls with at most ``DECODE_ROWS`` rows use it;
larger calls (prefills) keep ``F.linear``, which was as fast or faster there. The outputs agree with ``F.linear``
to float rounding (another summation order).

CPUs and BLAS builds differ, so a probe times both ways once per machine (probes.py) and packing is used only where
it measured at least ``MIN_GAIN`` faster. The copies take the weights' size again: models whose linear weights
exceed a quarter of the machine's memory are not packed. For generation only: no autograd through the copies.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..machine import memory_limit
from . import probes

DECODE_ROWS = 128  # larger calls are prefills: sgemm is as fast there (0.9-1.06x at 512-2048 rows)
MIN_GAIN = 1.1


def _packed_op(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, 8)


def seconds(weights: list[torch.Tensor], packed: list[torch.Tensor] | None, rows: int = 8, repeats: int = 5) -> float:
    """Median seconds of one decode-sized call through each weight, with ``F.linear`` or the packed copies."""
    x = torch.randn(rows, weights[0].shape[1])

    def calls():
        for i, weight in enumerate(weights):
            F.linear(x, weight) if packed is None else _packed_op(x, packed[i], None)

    return probes.median_seconds(calls, repeats)


def measure() -> dict:
    """Decode-sized calls through 128 MB of weights (a small model's worth, more than a CPU cache holds)."""
    torch.manual_seed(0)
    try:
        weights = [torch.randn(2048, 1024) for _ in range(16)]
        packed = [pack(w) for w in weights]
        x = torch.randn(8, 1024)
        if not torch.allclose(_packed_op(x, packed[0], None), F.linear(x, weights[0]), rtol=1e-4, atol=1e-3):
            return {"packed": False, "why": "oneDNN's output differed from F.linear"}
    except (RuntimeError, AttributeError) as err:  # torch built without oneDNN, or a CPU it does not serve
        return {"packed": False, "why": f"oneDNN unavailable: {str(err).splitlines()[0][:120]}"}
    with torch.inference_mode():
        plain, fast = seconds(weights, None), seconds(weights, packed)
    return {"sgemm_s": plain, "packed_s": fast, "packed": plain / fast >= MIN_GAIN}


def valid(found: dict) -> bool:
    """Whether a kept probe has every field ``packing_pays`` reads (a partial file is measured again)."""
    if isinstance(found.get("why"), str):
        return True
    return (isinstance(found.get("packed"), bool)
            and all(isinstance(found.get(k), (int, float)) and found[k] > 0 for k in ("sgemm_s", "packed_s")))


def packing_pays() -> tuple[bool, str]:
    """Whether decode steps on this CPU run faster through packed weights, and why (probe cached per machine)."""
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False, "torch has no oneDNN (or it is turned off)"
    found, where = probes.cached("packed-linear", measure, valid)
    if found is None:
        return False, f"{where}, so F.linear"
    if "why" in found:
        return False, found["why"]
    return found["packed"], f"packed weights ran {found['sgemm_s'] / found['packed_s']:.2f}x sgemm ({where})"


def packable(module: nn.Module) -> bool:
    """A plain fp32 CPU linear layer: not a subclass with its own forward (fake quantization, 4-bit...), and not one
    whose forward is already replaced (accelerate's hooks)."""
    weight = getattr(module, "weight", None)
    return (isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
            and "forward" not in vars(module) and isinstance(weight, torch.Tensor)
            and weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.dim() == 2)


@contextlib.contextmanager
def packed_linears(model: nn.Module):
    """While the block runs, decode-sized calls of the model's fp32 CPU ``nn.Linear`` layers go through oneDNN-packed
    copies of their weights (where the probe measured that faster). The copies are made on entry, from the weights
    as they are then (merged LoRA weights included), and dropped on exit. Yields how many layers were packed."""
    linears = [m for m in model.modules() if packable(m)]
    if (not linears or sum(m.weight.numel() * 4 for m in linears) > memory_limit() / 4
            or not packing_pays()[0]):
        yield 0
        return
    layers = []
    try:
        with torch.no_grad():
            for module in linears:
                try:
                    packed = pack(module.weight.detach())
                except RuntimeError:  # a shape oneDNN has no kernel for: this layer keeps F.linear
                    continue
                module.forward = _decode_forward(module, packed)
                layers.append(module)
        yield len(layers)
    finally:
        for module in layers:
            del module.forward  # the class's forward again


def _decode_forward(module: nn.Linear, packed: torch.Tensor):
    plain = module.forward
    packed_from = (module.weight.data_ptr(), module.weight._version)  # a weight changed since is not what was packed

    def forward(x: torch.Tensor) -> torch.Tensor:
        if (x.numel() // x.shape[-1] > DECODE_ROWS or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or (module.weight.data_ptr(), module.weight._version) != packed_from
                or (torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad))):
            return plain(x)
        return _packed_op(x, packed, module.bias)

    return forward
