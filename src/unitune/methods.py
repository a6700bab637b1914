"""The method table: one row per training method, read by every layer (flags, data, training, evaluation, the UI).

Adding a method means one row here and one module in ``unitune/train/methods/`` with two functions:
``prepare(ds, fmt, settings, tokenizer) -> Dataset`` (shape the canonical rows for the TRL trainer; ``settings`` is
the pipeline's ``DataSettings``) and ``build(cfg, model, tokenizer, train_ds, eval_ds, args) -> Trainer`` (``args``
holds the shared TrainingArguments fields; the module adds its own). The table itself imports nothing of unitune.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class MethodSpec:
    name: str
    formats: tuple[str, ...]  # data formats it accepts (see data.formats.FORMATS), preferred first
    learning_rate: float  # the seed's default
    split: str  # its natural split in UltraFeedback-style datasets
    beta: float | None  # default --beta, None when the method has none
    summary: str
    samples_completions: bool = False  # its batch counts sampled completions (num_generations per prompt), not rows

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"unitune.train.methods.{self.name}")


_PAIRS = ("preference", "preference_implicit")
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in [
    MethodSpec("sft", ("conversational", "prompt_completion", "text", *_PAIRS), 2e-4, "train_sft", None,
               "supervised fine-tuning on replies"),
    MethodSpec("dpo", _PAIRS, 5e-5, "train_prefs", 0.1, "direct preference optimisation"),
    MethodSpec("orpo", _PAIRS, 8e-6, "train_prefs", 0.1, "odds-ratio preference optimisation, no reference"),
    MethodSpec("kto", ("unpaired", *_PAIRS), 5e-5, "train_prefs", 0.1, "Kahneman-Tversky optimisation"),
    MethodSpec("grpo", ("prompt_only", "preference", "prompt_completion", "unpaired", "conversational"), 5e-5,
               "train_gen", 0.0, "group relative policy optimisation with reward functions", samples_completions=True),
]}
