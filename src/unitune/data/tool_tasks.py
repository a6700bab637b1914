"""The bundled calculator task (``--dataset calculator``): arithmetic on 3- and 4-digit numbers, which a small model
gets wrong in its head and right with the built-in ``calculator`` tool (unitune.tools).

Every split has the same columns: ``prompt`` (a system and a user message, which asks for the demo's ``Answer:``
line), ``messages`` (the whole episode: the
prompt, the assistant's tool call, the tool's result and the final reply, for SFT), ``answer`` (for GRPO's accuracy
reward and eval) and ``tools`` (the JSON schema of the calculator, rendered into the system prompt by the chat
template). Regenerate the committed parquet files with ``python scripts/make_demo_data.py``.
"""

from __future__ import annotations

import json
import random

from ..tools import calculator, describe
from .demo_tasks import FORMAT_HINT, held_out_splits

SYSTEM = "You are a helpful assistant. For arithmetic, call the calculator tool."
SPLIT_SIZES = {"train_sft": 600, "test_sft": 100, "train_gen": 600, "test_gen": 200}
ASK = {"+": ["What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} plus {b}."],
       "-": ["What is {a} - {b}?", "Subtract {b} from {a}.", "Compute {a} minus {b}."],
       "*": ["What is {a} * {b}?", "Multiply {a} by {b}.", "Compute {a} times {b}."]}


def _question(r: random.Random) -> tuple[str, str]:
    op = r.choice("+-**")  # products most: the hardest in one's head
    digits = (3, 4) if op == "*" else (4, 4)
    a, b = (r.randint(10 ** (n - 1), 10 ** n - 1) for n in digits)
    if r.random() < 0.5:
        a, b = b, a
    return r.choice(ASK[op]).format(a=a, b=b), f"{a} {op} {b}"


def make_row(r: random.Random) -> dict:
    question, expression = _question(r)
    value = calculator(expression)
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{question} {FORMAT_HINT}"}]
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}
    messages = prompt + [{"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "name": "calculator", "content": value},
                         {"role": "assistant", "content": f"{expression} = {value}.\nAnswer: {value}"}]
    return {"prompt": prompt, "messages": messages, "answer": value,
            "tools": json.dumps([describe(calculator, "unitune.tools")])}


def generate_splits(seed: int = 0) -> dict[str, list[dict]]:
    """Deterministic splits; a question appears in at most one split so test rows are held out."""
    return held_out_splits(make_row, SPLIT_SIZES, lambda row: row["prompt"][-1]["content"], seed)
