"""The bundled demo tasks: a deterministic generator of the demo data.

Every prompt asks for a final line of the form ``Answer: <value>`` (the ``tagged`` answer format, which
``unitune.answers.check_answer`` reads). The dataset mirrors ``HuggingFaceH4/ultrafeedback_binarized`` (same splits and
columns) plus an ``answer`` column, so everything that reads UltraFeedback reads it too.

Regenerate the committed parquet files with ``python scripts/make_demo_data.py``.
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable

# Worded so the base model sometimes complies when sampling (measured: ~19% of samples have an answer
# line against ~8% for "End with a line of the form 'Answer: <value>'."), which gives GRPO a signal,
# while its greedy replies still get none right.
FORMAT_HINT = "Answer briefly. Your last line must be 'Answer: ' followed by the result."
SPLIT_SIZES = {"train_sft": 2000, "test_sft": 200, "train_prefs": 2000, "test_prefs": 200,
               "train_gen": 2000, "test_gen": 200}
WORDS = ["apple", "river", "stone", "garden", "cloud", "pencil", "window", "tiger", "lemon", "bridge",
         "candle", "forest", "rocket", "silver", "planet", "orange", "castle", "button", "summer", "violin"]
UNITS = [("meters", "centimeters", 100), ("hours", "minutes", 60), ("kilograms", "grams", 1000),
         ("minutes", "seconds", 60), ("liters", "milliliters", 1000), ("days", "hours", 24),
         ("feet", "inches", 12), ("weeks", "days", 7)]


def _arith(r: random.Random):
    a, b = r.randint(10, 99), r.randint(10, 99)
    op = r.choice(["+", "-", "*"])
    if op == "*":
        a, b = r.randint(2, 12), r.randint(2, 12)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}.", str(value)


def _compare(r: random.Random):
    a, b = r.sample(range(1, 1000), 2)
    if r.random() < 0.5:
        a, b = a / 100, b / 100
        a, b = f"{a:g}", f"{b:g}"
    else:
        a, b = str(a), str(b)
    word = r.choice(["larger", "smaller"])
    pick = max if word == "larger" else min
    value = pick([a, b], key=float)
    other = b if value == a else a
    return f"Which number is {word}: {a} or {b}?", f"{value} is {word} than {other}.", value


def _count(r: random.Random):
    items = r.sample(WORDS, r.randint(3, 9))
    return (f"How many items are in this list: {', '.join(items)}?",
            f"The list has {len(items)} items.", str(len(items)))


def _convert(r: random.Random):
    big, small, factor = r.choice(UNITS)
    n = r.randint(2, 12)
    return (f"How many {small} are in {n} {big}?", f"{n} {big} is {n} x {factor} = {n * factor} {small}.",
            str(n * factor))


def _format(r: random.Random):
    word = r.choice(WORDS)
    kind = r.choice(["upper", "first", "last"])
    if kind == "upper":
        return (f"Write the word '{word}' in capital letters.", f"In capital letters, '{word}' is {word.upper()}.",
                word.upper())
    pos, letter = ("first", word[0]) if kind == "first" else ("last", word[-1])
    return (f"What is the {pos} letter of the word '{word}'? Give it in lowercase.",
            f"The {pos} letter of '{word}' is {letter}.", letter)


TASKS = [_arith, _compare, _count, _convert, _format]


def _wrong_value(r: random.Random, value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value.lower() if value.isupper() and len(value) > 1 else chr((ord(value[-1]) - 97 + 3) % 26 + 97)
    delta = r.choice([-3, -2, -1, 1, 2, 5, 10])
    wrong = number + delta if "." not in value else round(number + delta / 10, 2)
    return f"{wrong:g}"


def make_row(r: random.Random) -> dict:
    question, reasoning, value = r.choice(TASKS)(r)
    prompt = f"{question} {FORMAT_HINT}"
    chosen_text = f"{reasoning}\nAnswer: {value}"
    # Rejected replies break the requested format (mostly) or state a wrong value. The format-breaking
    # kinds are ones the base model finds about as likely as the chosen reply (measured: it ranks the
    # chosen reply first on only ~45-65% of them), so preference training has something to learn.
    kind = r.random()
    if kind < 0.35:  # the reasoning without the answer line
        rejected_text = reasoning
    elif kind < 0.65:  # a plain sentence, no answer line
        rejected_text = f"The answer is {value}."
    elif kind < 0.85:  # the answer line first, not last
        rejected_text = f"Answer: {value}\n{reasoning}"
    else:  # right format, wrong value
        wrong = _wrong_value(r, value)
        head, _, tail = reasoning.rpartition(value)  # swap the last mention of the value only
        rejected_text = f"{head}{wrong}{tail}\nAnswer: {wrong}"
    user = {"content": prompt, "role": "user"}
    chosen = [user, {"content": chosen_text, "role": "assistant"}]
    rejected = [user, {"content": rejected_text, "role": "assistant"}]
    return {
        "prompt": prompt,
        "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
        "chosen": chosen,
        "rejected": rejected,
        "messages": chosen,
        "score_chosen": float(r.choice([8, 9, 10])),
        "score_rejected": float(r.choice([1, 2, 3, 4, 5])),
        "answer": value,
    }


def generate_splits(seed: int = 0) -> dict[str, list[dict]]:
    """Deterministic splits; a prompt appears in at most one split so test rows are held out."""
    return held_out_splits(make_row, SPLIT_SIZES, lambda row: row["prompt"], seed)


def held_out_splits(make: Callable[[random.Random], dict], sizes: dict[str, int], key: Callable[[dict], str],
                    seed: int) -> dict[str, list[dict]]:
    """Splits of ``make``'s rows, drawn from one seeded stream, each ``key`` in at most one split."""
    r = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for name, size in sizes.items():
        rows: list[dict] = []
        while len(rows) < size:
            row = make(r)
            if key(row) not in seen:
                seen.add(key(row))
                rows.append(row)
        splits[name] = rows
    return splits
