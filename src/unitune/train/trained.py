"""The model a run trained, loaded back: its base as it was trained (a QLoRA run's 4-bit base, a Hub base at the
revision it trained on) with its adapter.

A QLoRA adapter learned to correct the 4-bit weights it trained on, so scoring, merging or chatting with it on the
full-precision weights is another model (5e-2 off on the tiny model's logits). Two forms are that model:
- on the 4-bit base, adapter on top: bitsandbytes' forward as in training, in 4-bit memory (CUDA: what the evaluator
  uses, loaded in the training dtype with ``device_map="auto"``);
- merged into the dequantised 4-bit base in fp32: the exact 4-bit values plus the adapter, 6e-7 from the trained
  weights (what merge, export and chat write, and what the evaluator uses on CPU, where bitsandbytes' own 4-bit
  kernel is itself 5e-3 off those values on some CPUs, and slower).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.hardware import Hardware
from ..models.load import load_model
from ..models.revision import pinned
from .records import read_run


def _hardware(run: Path) -> dict:
    return (read_run(run) or {}).get("hardware") or {}


def training_dtype(run: Path) -> torch.dtype:
    """The dtype the run computed in (its record's hardware.dtype; fp32 when it records none)."""
    return getattr(torch, str(_hardware(run).get("dtype", "torch.float32")).removeprefix("torch."), torch.float32)


def qlora_dtype(run: Path) -> torch.dtype | None:
    """The compute dtype a QLoRA run quantised its base in; None for a LoRA run."""
    return training_dtype(run) if _hardware(run).get("qlora") else None


def base_revision(run: Path, base: str) -> str | None:
    """The commit of a Hub base the run trained on (its record's ``base_revision``), to load again; a line when the
    repo has moved on since. None for a local base or a record from before revisions were kept."""
    return pinned(base, (read_run(run) or {}).get("base_revision"), f"the run {run.name}")


def load_base(base: str, run: Path, merge_base: str):
    """The base weights to merge into, fp32: for a QLoRA run with merge_base "quantized", the 4-bit NF4 base it
    trained on (quantised as in training, then dequantised to fp32: the exact quantised values, whatever dtype the
    training computed in); else the full-precision weights. A Hub base at the revision the run trained on."""
    from transformers import AutoModelForCausalLM

    dtype, revision = qlora_dtype(run), base_revision(run, base)
    if dtype is None or merge_base == "original":
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, revision=revision)
    # Quantise on the CPU as training did on its device: NF4 blocks and absmax do not depend on the device.
    model = load_model(base, Hardware("cpu", dtype, True, False, "merge"), revision=revision)
    # Not dequantize(dtype=<the training's compute dtype>): bf16 would round the quantised values (0.016 on the
    # tiny model's logits, against 3e-7 in fp32).
    return model.dequantize(dtype=torch.float32)


def merged_model(run: Path, base: str, merge_base: str = "quantized"):
    """``run``'s adapter merged into its base (module docstring), in fp32; the merge base actually used."""
    from peft import PeftModel

    used = merge_base if qlora_dtype(run) is not None else "original"
    return PeftModel.from_pretrained(load_base(base, run, used), str(run)).merge_and_unload().eval(), used


def as_trained(run: Path, base: str, device: str, merge: bool | None = None):
    """The run's model in the form the evaluator scores on ``device``, and that form in words (for the results).

    CUDA: the base in the training dtype (4-bit NF4 for QLoRA) spread with ``device_map="auto"``, the adapter on
    top, unmerged, as the training computed. CPU: merged in fp32 (into the dequantised 4-bit base for QLoRA).
    ``merge`` chooses the form against the device's default."""
    from peft import PeftModel

    qlora = qlora_dtype(run) is not None
    if device == "cpu" if merge is None else merge:
        model, _ = merged_model(run, base)
        return model, ("adapter merged into the dequantised 4-bit base, fp32" if qlora
                       else "adapter merged into the base, fp32")
    dtype = training_dtype(run)
    hw = Hardware(device, dtype, qlora, False, "evaluation")
    model = load_model(base, hw, device_map="auto", revision=base_revision(run, base))
    model = PeftModel.from_pretrained(model, str(run)).eval()
    name = str(dtype).removeprefix("torch.")
    return model, (f"4-bit NF4 base ({name} compute) with the adapter, as trained" if qlora
                   else f"{name} base with the adapter, as trained")
