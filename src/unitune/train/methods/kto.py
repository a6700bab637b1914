"""KTO: TRL KTOTrainer. Preference pairs are unpaired automatically (data.convert.unpaired_rows)."""

from __future__ import annotations

from trl import KTOConfig, KTOTrainer

from ...models.load import lora_config
from . import trainer_tokenizer


def class_weights(labels: list[bool]) -> tuple[float, float, str]:
    """(desirable_weight, undesirable_weight, why). TRL's docs ask for
    desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3];
    when the counts fall outside it, weight the desirable side so the ratio is 1."""
    good = sum(labels)
    bad = len(labels) - good
    if good == 0 or bad == 0:
        return 1.0, 1.0, f"only {'desirable' if bad == 0 else 'undesirable'} examples; default weights"
    ratio = good / bad
    if 1 <= ratio <= 4 / 3:
        return 1.0, 1.0, f"{good} desirable / {bad} undesirable is within TRL's recommended range"
    weight = round(bad / good, 4)
    return weight, 1.0, f"{good} desirable / {bad} undesirable: desirable_weight={weight} balances them"


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    desirable, undesirable, why = class_weights(train_ds["label"])
    print(f"unitune: KTO weights: {why}", flush=True)
    config = KTOConfig(**args, beta=cfg.beta, max_length=cfg.max_length, desirable_weight=desirable,
                       undesirable_weight=undesirable)
    return KTOTrainer(model=model, ref_model=None, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=trainer_tokenizer(tokenizer),
                      peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
