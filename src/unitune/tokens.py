"""Texts to token ids (and offsets) through the fast tokenizer, a batch per call, without the Python objects a
tokenizer call builds for each token: the data path tokenises every row once, and this is most of its cost."""

from __future__ import annotations


def token_ids(tokenizer, texts: list[str], add_special_tokens: bool = True, offsets: bool = False):
    """``tokenizer(texts)["input_ids"]`` (and with ``offsets`` its ``offset_mapping``: ``(ids, offsets)``), without the
    Python objects a call builds for each token: read from a fast tokenizer's encodings (``encode_batch_fast`` where
    no offsets are asked for), after a call on the first text has set its truncation, padding and special-token
    handling as any call sets them, so the ids are the call's (tests/data/test_tokenized.py compares them)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast") or len(texts) < 2:
        enc = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=offsets)
        return (enc["input_ids"], enc["offset_mapping"]) if offsets else enc["input_ids"]
    first = tokenizer(texts[:1], add_special_tokens=add_special_tokens, return_offsets_mapping=offsets)
    if not offsets:
        rest = backend.encode_batch_fast(texts[1:], add_special_tokens=add_special_tokens)
        return first["input_ids"] + [e.ids for e in rest]
    rest = backend.encode_batch(texts[1:], add_special_tokens=add_special_tokens)
    return first["input_ids"] + [e.ids for e in rest], first["offset_mapping"] + [e.offsets for e in rest]
