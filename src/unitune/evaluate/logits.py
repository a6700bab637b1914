"""The model's own transform of its LM head's output (scales, multipliers, softcapping), for a scorer that runs the LM
head itself, and a check on the model's own forward that it is the whole transform.

The packed scorer projects only the loss positions through the LM head, so it must apply what the model's forward
applies after it: Granite and MiniCPM3 divide by ``logits_scaling``, Cohere multiplies by ``logit_scale``, Falcon-H1
by ``lm_head_multiplier``, Gemma-2/3 softcap. The lookup is TRL's own (``trl.trainer.utils.add_fused_lm_head``, which
keeps it inline), so training and scoring read a config the same way. Architectures do more than any table knows, so
``checked_transform`` compares the result with the model's own forward on one row: a model whose logits differ is
scored through its plain forward instead, with one line that says so.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..errors import warn


@dataclass(frozen=True)
class LogitTransform:
    """logits -> softcap * tanh(logits * scale / softcap) (no softcap: logits * scale)."""

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def logit_transform(model) -> LogitTransform:
    """What the config says the forward applies after the LM head, read as TRL 1.16's fused LM head reads it."""
    config = model.config.get_text_config()
    scale = getattr(config, "logit_scale", None)  # Cohere; None on models that don't scale (MPT)
    if scale is None:
        scale = getattr(config, "output_multiplier", None)
    if scale is None:
        scale = getattr(config, "lm_head_multiplier", None)  # Falcon-H1
    if scale is None and getattr(config, "logits_scaling", None) is not None:  # Granite, MiniCPM3 divide by it;
        scaling = config.logits_scaling  # HyperCLOVA X multiplies
        scale = scaling if config.model_type == "hyperclovax" else 1 / scaling
    return LogitTransform(1.0 if scale is None else float(scale), getattr(config, "final_logit_softcapping", None))


def tolerance(model) -> float:
    """How far two computations of the same logits may differ in the model's dtype (relative to the largest)."""
    dtype = next(model.parameters()).dtype
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its checked transform (or None)


@torch.inference_mode()
def checked_transform(model, ids: list[int], name: str = "model") -> LogitTransform | None:
    """The transform, when the decoder, LM head and transform reproduce the model's own logits on ``ids`` (one row,
    at most 64 tokens); else None, after one line: the scorer then takes the plain forward. Checked once per model."""
    if model in _CHECKED:
        return _CHECKED[model]
    transform = logit_transform(model)
    row = torch.tensor([ids[:64]], device=next(model.parameters()).device)
    own = model(input_ids=row).logits.float().cpu()  # with device_map="auto" the two may end on other GPUs
    ours = transform(model.get_output_embeddings()(model.get_decoder()(input_ids=row).last_hidden_state).float())
    if (own - ours.cpu()).abs().max() > tolerance(model) * max(1.0, own.abs().max().item()):
        warn(f"{name}: its forward transforms the LM head's output in a way the packed scorer does not know "
             f"({type(model).__name__}); scoring it through its own forward instead (slower, same losses)")
        transform = None
    _CHECKED[model] = transform
    return transform
