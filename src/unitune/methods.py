"""The method table: one row per training method, read by every layer (flags, data, training, evaluation, the UI).

Adding a method means one row here and one module in ``unitune/train/methods/`` with its
``build(cfg, model, tokenizer, train_ds, eval_ds, args) -> Trainer`` (``args`` holds the shared TrainingArguments
fields; the module adds its own). A row names the rows its trainer takes (``rows``: one of the data pipeline's
conversions, ``unitune.data.convert.CONVERSIONS``); a method whose trainer wants another shape adds its conversion
there. The table is data: it imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    name: str
    formats: tuple[str, ...]  # data formats it accepts (see data.formats.FORMATS), preferred first
    learning_rate: float  # the seed's default
    split: str  # its natural split in UltraFeedback-style datasets
    beta: float | None  # default --beta, None when the method has none
    summary: str
    rows: str  # the rows its trainer takes: a conversion of data.convert.CONVERSIONS
    samples_completions: bool = False  # its batch counts sampled completions (num_generations per prompt), not rows
    streams: bool = False  # --streaming trains it (its trainer is tested on a stream of rows)
    scores: bool = False  # it trains a scalar score head (a sequence-classification model), not the language model
    teacher: bool = False  # it learns a --teacher model's next-token distributions

    @property
    def samples(self) -> bool:
        """It samples completions while it trains (GRPO, RLOO, distill): its prompts are rendered as chat."""
        return self.samples_completions or self.teacher


_PAIRS = ("preference", "preference_implicit")
_PROMPTED = ("prompt_only", "preference", "prompt_completion", "unpaired", "conversational")
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in [
    MethodSpec("sft", ("conversational", "prompt_completion", "text", *_PAIRS), 2e-4, "train_sft", None,
               "supervised fine-tuning on replies", "conversations", streams=True),
    MethodSpec("dpo", _PAIRS, 5e-5, "train_prefs", 0.1, "direct preference optimisation", "pair_ids",
               streams=True),
    MethodSpec("orpo", _PAIRS, 8e-6, "train_prefs", 0.1, "odds-ratio preference optimisation, no reference", "pairs"),
    MethodSpec("kto", ("unpaired", *_PAIRS), 5e-5, "train_prefs", 0.1, "Kahneman-Tversky optimisation", "unpaired"),
    MethodSpec("grpo", _PROMPTED, 5e-5, "train_gen", 0.0, "group relative policy optimisation with reward functions",
               "prompts", samples_completions=True),
    MethodSpec("rm", _PAIRS, 1e-4, "train_prefs", None, "reward model: a scalar score head trained on preference "
               "pairs", "scored_pairs", scores=True),
    MethodSpec("rloo", _PROMPTED, 5e-5, "train_gen", 0.05, "REINFORCE leave-one-out, GRPO's rewards and sampling",
               "prompts", samples_completions=True),
    MethodSpec("distill", _PROMPTED, 1e-4, "train_gen", 1.0, "on-policy distillation: a --teacher's token "
               "distributions on the student's own samples", "prompts", teacher=True),
]}
SAMPLING = tuple(name for name, spec in METHODS.items() if spec.samples_completions)  # sample and reward completions
GENERATING = tuple(name for name, spec in METHODS.items() if spec.samples)  # sample while training


def is_reward_model(method: str | None) -> bool:
    """Whether ``method`` trains a score head (a reward model) rather than the language model."""
    return method in METHODS and METHODS[method].scores
