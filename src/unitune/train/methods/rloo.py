"""RLOO: TRL's RLOOTrainer (REINFORCE leave-one-out: each completion's baseline is the mean reward of the others
sampled for its prompt, and the KL to the reference, weighted by --beta, enters the reward). It takes GRPO's data,
rewards, reward model and sampling flags, and its CPU speed-ups (grpo.py)."""

from __future__ import annotations

import trl
from trl import RLOOConfig

from ...models.load import lora_config
from .grpo import FastSampling, sampling_setup


class RLOOTrainer(FastSampling, trl.RLOOTrainer):
    pass


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    sampling, rewards = sampling_setup(cfg, train_ds, args)
    return RLOOTrainer(model=model, args=RLOOConfig(**sampling), train_dataset=train_ds, eval_dataset=eval_ds,
                       processing_class=tokenizer, **rewards,
                       peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
