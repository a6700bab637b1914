"""DPO: TRL DPOTrainer. With LoRA the reference is the base with the adapter disabled (no second copy)."""

from __future__ import annotations

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from ...data.lengths import list_lengths
from ...models.load import lora_config
from . import trainer_tokenizer


class PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer taking the rows the data pipeline already tokenised as its own preparation would
    (data.convert.pair_tokens, whose test compares the two): of that preparation only the last step runs here,
    dropping rows whose prompt alone fills max_length. Rows without ``prompt_ids`` go through TRL's own."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" not in (dataset.column_names or []):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if args.max_length is None or args.truncation_mode != "keep_start":
            return dataset
        if not isinstance(dataset, Dataset):  # a stream (--streaming): filtered as it is read
            return dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)
        keep = [i for i, n in enumerate(list_lengths(dataset, "prompt_ids")) if n < args.max_length]
        return dataset.select(keep) if len(keep) < len(dataset) else dataset


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    extra = {"loss_type": [cfg.loss_type]} if cfg.loss_type else {}
    config = DPOConfig(**args, beta=cfg.beta, max_length=cfg.max_length, **extra)
    return PretokenizedDPOTrainer(model=model, ref_model=None, args=config, train_dataset=train_ds,
                                  eval_dataset=eval_ds, processing_class=trainer_tokenizer(tokenizer),
                                  peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
