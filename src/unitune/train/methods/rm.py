"""RM: TRL's RewardTrainer. The base gets a one-output score head (a sequence-classification model) trained in full
beside the LoRA adapter, on preference pairs: the chosen reply's score above the rejected one's (Bradley-Terry).
The run folder loads with AutoModelForSequenceClassification and PEFT (train.trained.reward_classifier); GRPO and
RLOO take it as ``--reward_model``."""

from __future__ import annotations

from trl import RewardConfig, RewardTrainer

from ...models.load import lora_config


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    # The score is read at the last token that is not padding: the model must know the tokenizer's pad.
    model.config.pad_token_id = tokenizer.pad_token_id
    config = RewardConfig(**args, max_length=cfg.max_length)
    return RewardTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer,
                         peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, scores=True))
