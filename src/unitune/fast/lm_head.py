"""TRL's fused LM head on the loss positions only, on CPU too.

TRL's fused LM head projects only the positions that carry a loss, but only where Triton runs (CUDA/XPU). On CPU it
scores every position, prompt and padding included, against the full vocabulary. ``compact_lm_head`` lets it take the
compact path on CPU too (same kernel, fewer rows), while our trainer runs, and puts TRL's function back afterwards.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import UserError

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
