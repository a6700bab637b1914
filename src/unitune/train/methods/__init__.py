"""Each method's trainer: one module per row of the method table (unitune/methods.py), whose ``build`` makes the
method's TRL trainer from its public config. The rows it trains on come from the data pipeline (``rows`` in the
table)."""

from __future__ import annotations

import copy
import importlib
from types import ModuleType

from ...templates import reply_end


def trainer_module(method: str) -> ModuleType:
    """The module of ``method``'s trainer (``unitune.train.methods.<method>``)."""
    return importlib.import_module(f"{__name__}.{method}")


def trainer_tokenizer(tokenizer):
    """The tokenizer for trainers that take rendered strings (DPO, ORPO, KTO), with its EOS set to the template's
    end-of-turn token: they append the EOS to a reply that does not end with it, and the reply already ends with
    its end-of-turn token (Gemma's <end_of_turn>, Llama-3's <|eot_id|>), as SFT and the evaluator have it."""
    end = reply_end(tokenizer)
    if not end or end == tokenizer.eos_token:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.eos_token = end
    return tokenizer
