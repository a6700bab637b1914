"""SFT: TRL SFTTrainer. Conversations are tokenised here with assistant-only masks (unitune.templates)."""

from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from ...data.convert import to_conversations
from ...models.load import lora_config
from ...templates import chat_format, require_chat_template


def prepare(ds, fmt, settings, tokenizer):
    ds = to_conversations(ds, fmt)
    if "messages" not in ds.column_names:
        return ds  # prompt/completion or text: TRL masks the prompt itself (completion_only_loss)
    require_chat_template(tokenizer, tokenizer.name_or_path or "the model")
    chat = chat_format(tokenizer)

    def encode(row):
        if settings.train_on_prompt:  # every token trained: no reply spans to find
            ids = tokenizer(chat.render(row["messages"]), add_special_tokens=False)["input_ids"]
            return {"input_ids": ids, "assistant_masks": [1] * len(ids)}
        return chat.encode(row["messages"])

    return ds.map(encode, remove_columns=ds.column_names, desc="Tokenizing (assistant-only loss)")


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    config = SFTConfig(**args, max_length=cfg.max_length, completion_only_loss=not cfg.train_on_prompt)
    return SFTTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
