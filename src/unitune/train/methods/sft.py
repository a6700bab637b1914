"""SFT: TRL SFTTrainer, on conversations tokenised with their labels by the data pipeline
(data.convert.conversation_rows); prompt/completion and text rows are tokenised by TRL."""

from __future__ import annotations

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ...data.lengths import list_lengths
from ...errors import warn
from ...fast.packing import attention_only
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


PADDING_WASTE = 1.25  # padded tokens over real ones from which padding-free micro-batches pay: on the bundled demo
# rows (1.06) they ran 13% slower than padded ones, on bench/run.py's long rows (1.5) 13-24% faster (bench/RESULTS.md)


def padding_factor(lengths: list[int], batch: int, draws: int = 1000) -> float:
    """The tokens a micro-batch of ``batch`` random rows holds when padded to its longest row, over its real tokens
    (``draws`` micro-batches drawn, seeded)."""
    import random

    rng, padded, real = random.Random(0), 0, 0
    for _ in range(draws):
        rows = rng.sample(lengths, min(batch, len(lengths)))
        padded += len(rows) * max(rows)
        real += sum(rows)
    return padded / real if real else 1.0


def padding_free(cfg, model, train_ds) -> bool:
    """--padding_free: true, false, or auto: on when padding would add PADDING_WASTE (said in one line). A stream's
    lengths are unknown before it is read (auto: off); one row per micro-batch has no padding. Only for models whose
    every layer is attention: the position ids keep rows apart there, not in a convolution or state-space layer."""
    if not attention_only(model):
        if cfg.padding_free == "true":
            warn(f"--padding_free: {type(model).__name__} has layers other than attention, which would carry one row "
                 "into the next; its micro-batches are padded")
        return False
    if cfg.padding_free != "auto":
        return cfg.padding_free == "true"
    if not isinstance(train_ds, Dataset) or cfg.per_device_train_batch_size < 2 or not len(train_ds):
        return False
    factor = padding_factor(list_lengths(train_ds, "input_ids"), cfg.per_device_train_batch_size)
    if factor >= PADDING_WASTE:
        print(f"unitune: plan: padding-free micro-batches: padded to their longest row, they would hold {factor:.2f}x "
              "the real tokens (--padding_free false pads them)", flush=True)
    return factor >= PADDING_WASTE


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    labelled = "labels" in train_ds.column_names
    flat = {}
    if labelled:
        train_ds = truncated(train_ds, cfg.max_length)
        eval_ds = truncated(eval_ds, cfg.max_length) if eval_ds is not None else None
        args = args | {"dataset_kwargs": {"skip_prepare_dataset": True}}
        if padding_free(cfg, model, train_ds):  # the rows are cut already (TRL cuts only padded rows itself); every
            # token is real, so all are counted (the pad id can be a real token, as the end of turn is for SmolLM2)
            flat = {"padding_free": True, "max_length": None, "include_num_input_tokens_seen": "all"}
    elif cfg.padding_free == "true":
        warn("--padding_free applies to conversational rows; these rows are padded")
    config = SFTConfig(**(args | {"max_length": cfg.max_length} | flat), completion_only_loss=not cfg.train_on_prompt)
    return SFTTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
