"""DPO: TRL DPOTrainer. With LoRA the reference is the base with the adapter disabled (no second copy)."""

from __future__ import annotations

from trl import DPOConfig, DPOTrainer

from ...models.load import lora_config
from . import trainer_tokenizer


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    extra = {"loss_type": [cfg.loss_type]} if cfg.loss_type else {}
    config = DPOConfig(**args, beta=cfg.beta, max_length=cfg.max_length, **extra)
    return DPOTrainer(model=model, ref_model=None, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=trainer_tokenizer(tokenizer),
                      peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
