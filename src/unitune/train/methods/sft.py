"""SFT: TRL SFTTrainer, on conversations tokenised with their labels by the data pipeline
(data.convert.conversation_rows); prompt/completion and text rows are tokenised by TRL."""

from __future__ import annotations

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ...models.load import lora_config


def truncated(ds, max_length: int):
    """What SFTTrainer's preparation does last to rows that come with labels: each cut to ``max_length`` (TRL's
    keep_start), and the rows left with no trained token dropped. One batched pass; the trainer then skips its own
    (``skip_prepare_dataset``), which would build the labels again a token at a time."""
    def cut(batch):
        kept = {"input_ids": [], "labels": []}
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            labels = labels[:max_length]
            if any(label != -100 for label in labels):
                kept["input_ids"].append(ids[:max_length])
                kept["labels"].append(labels)
        return kept

    described = {"desc": "Truncating to --max_length"} if isinstance(ds, Dataset) else {}  # a stream takes no desc
    return ds.map(cut, batched=True, remove_columns=ds.column_names, **described)


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    labelled = "labels" in train_ds.column_names
    if labelled:
        train_ds = truncated(train_ds, cfg.max_length)
        eval_ds = truncated(eval_ds, cfg.max_length) if eval_ds is not None else None
        args = args | {"dataset_kwargs": {"skip_prepare_dataset": True}}
    config = SFTConfig(**args, max_length=cfg.max_length, completion_only_loss=not cfg.train_on_prompt)
    return SFTTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
