"""Distill: TRL's DistillationTrainer, on-policy distillation (Agarwal et al. 2024, "On-Policy Distillation of
Language Models"): the student samples a completion for each prompt and learns the --teacher's next-token
distributions on it, under a generalised Jensen-Shannon divergence (--beta: 0 forward KL, 1 reverse KL, TRL's
default). The teacher comes from train.trained.teacher_model, refused there when its tokenizer is not the student's.
"""

from __future__ import annotations

from trl import DistillationConfig, DistillationTrainer

from ...models.load import lora_config
from ..trained import teacher_model


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    teacher = teacher_model(cfg.teacher, tokenizer)
    print(f"unitune: distilling from {cfg.teacher}", flush=True)
    config = DistillationConfig(**args, beta=cfg.beta, temperature=cfg.temperature,
                                max_completion_length=cfg.max_completion_length)
    return DistillationTrainer(model=model, teacher_model=teacher, args=config, train_dataset=train_ds,
                               eval_dataset=eval_ds, processing_class=tokenizer,
                               peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
