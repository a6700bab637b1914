"""SFT: TRL SFTTrainer, on conversations tokenised with assistant-only masks (data.convert.conversation_rows)."""

from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from ...models.load import lora_config


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    config = SFTConfig(**args, max_length=cfg.max_length, completion_only_loss=not cfg.train_on_prompt)
    return SFTTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
