"""ORPO: TRL's ORPOTrainer, which lives in ``trl.experimental.orpo`` (not TRL's top level).

The import path is experimental and may move between TRL releases: it is kept here, in one place,
and TRL is pinned in pyproject.toml.
"""

from __future__ import annotations

from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from ...models.load import lora_config
from . import trainer_tokenizer


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    # ORPO's collator reads the tokenised pair columns itself; the Trainer must not drop them. Its batches
    # have no `input_ids`, so the Trainer cannot count tokens.
    args = args | {"remove_unused_columns": False, "include_num_input_tokens_seen": "no"}
    config = ORPOConfig(**args, beta=cfg.beta, max_length=cfg.max_length)
    return ORPOTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                       processing_class=trainer_tokenizer(tokenizer),
                       peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
