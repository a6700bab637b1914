"""Checking a model's answer against a reference, in the formats datasets use. One function does it for the
evaluator's ``task_accuracy`` and the GRPO ``accuracy`` reward::

    from unitune.answers import check_answer
    check_answer("6 * 7 = 42\\n#### 42", "#### 42")            # True (gsm8k)
    check_answer("so the area is \\\\boxed{\\\\frac12}", "0.5")  # True (boxed, equal values)

Formats (``--answer_format``):

- ``tagged``: a line ``Answer: <value>`` (the bundled demo data); the reply's last such line is its answer.
- ``gsm8k``: the reference ends with ``#### <value>``; the reply's answer is its ``####`` line, else its last
  number.
- ``boxed``: ``\\boxed{...}`` (MATH-style); the reply's last box is its answer.
- ``last_number``: the last number in the reply (and in the reference, when it holds more than a value).
- ``exact``: the whole reply, stripped, equals the reference.
- ``auto``: from the reference: ``#### x`` is gsm8k, ``\\boxed{x}`` is boxed, ``Answer: x`` is tagged; a bare
  value is looked for in the reply's tagged, boxed or ``####`` answer, else its last number. For a whole
  dataset, ``resolve_format`` also reads the prompts (a prompt asking for an ``Answer:`` line makes it tagged).

Equality: values that look mathematical go to HF's ``math-verify`` (what TRL's ``accuracy_reward`` uses), so
``42 = 42.0``, ``1,000 = 1000``, ``1/2 = 0.5 = \\frac{1}{2}``, ``x+1 = 1+x``, with a time limit per item. Words
compare as text, case-insensitively, except an all-capitals reference, which asks for capitals.
"""

from __future__ import annotations

import logging
import re
import threading

FORMATS = ("auto", "tagged", "gsm8k", "boxed", "last_number", "exact")
PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S = 5, 5

_TAGGED = re.compile(r"answer\s*:\s*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
# A number: thousands grouping (1,000,000.5) only, so "roots 2,3" ends in 3, not 23; decimals; fractions.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_GROUPED = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_WORDS = re.compile(r"[A-Za-z][A-Za-z '\-]*")


def _clean(value: str) -> str:
    """A value without wrapping quotes, markdown emphasis, brackets or a final period."""
    return value.strip().strip("*`'\"[]").rstrip(".").strip()


def tagged_value(text: str) -> str | None:
    """The value on the last ``Answer:`` line."""
    found = _TAGGED.findall(text)
    return _clean(found[-1]) if found else None


def hashes_value(text: str) -> str | None:
    """The value after the last ``####``."""
    found = _HASHES.findall(text)
    return _clean(found[-1]) if found else None


def boxed_value(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    depth, begin = 0, text.index("{", start)
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin + 1: i].strip()
    return None  # an unclosed box is no answer


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].rstrip(".") if found else None


def reference_format(reference: str) -> str:
    """The format a single reference is written in (``auto`` for a bare value)."""
    if hashes_value(reference) is not None:
        return "gsm8k"
    if boxed_value(reference) is not None:
        return "boxed"
    if tagged_value(reference) is not None:
        return "tagged"
    return "auto"


def reference_value(reference: str, answer_format: str) -> str:
    """The value a reference states, read the way ``answer_format`` writes it (a bare reference is the value)."""
    reference = str(reference).strip()
    read = {"gsm8k": hashes_value, "boxed": boxed_value, "tagged": tagged_value}.get(answer_format)
    value = read(reference) if read else None
    if value is None and answer_format == "last_number" and len(reference.split()) > 1:
        value = last_number(reference)  # "42 apples", "about 42"; a single token ("x+1", "1/2") is the value
    return value if value is not None else reference


def reply_value(reply: str, answer_format: str) -> str | None:
    """The answer a reply gives in ``answer_format`` (``auto``: tagged, boxed or ``####``, else the last number);
    None when it gives none."""
    if answer_format == "exact":
        return reply.strip()
    if answer_format == "tagged":
        return tagged_value(reply)
    if answer_format == "boxed":
        return boxed_value(reply)
    if answer_format == "gsm8k":
        return hashes_value(reply) or last_number(reply)
    if answer_format == "last_number":
        return last_number(reply)
    for read in (tagged_value, boxed_value, hashes_value, last_number):
        value = read(reply)
        if value is not None:
            return value
    return None


def check_answer(reply: str, reference: str, answer_format: str = "auto") -> bool:
    """True when ``reply`` gives the answer ``reference`` states, in ``answer_format`` (see the module doc)."""
    if answer_format not in FORMATS:
        raise ValueError(f"unknown answer format '{answer_format}'; use one of: {', '.join(FORMATS)}")
    if answer_format == "exact":
        return reply.strip() == str(reference).strip()
    if answer_format == "auto":
        answer_format = reference_format(str(reference))
    got = reply_value(reply, answer_format)
    return got is not None and same_value(reference_value(reference, answer_format), got)


def same_value(expected: str, got: str) -> bool:
    """Equal answers: words as text (an all-capitals reference asks for capitals), anything else by math-verify,
    falling back to text when it cannot parse either side."""
    expected, got = expected.strip(), got.strip()
    words = _clean(expected)
    if _WORDS.fullmatch(words):  # "(B)", "**Paris**." give their word; never algebra
        got = _clean(got).strip("()").strip()
        return got == words if len(words) > 1 and words.isupper() else got.lower() == words.lower()
    if expected == got:
        return True
    plain = _plain_numbers(expected, got)
    if plain is not None:
        return plain
    verdict = _math_equal(expected, got)
    return verdict if verdict is not None else " ".join(got.lower().split()) == " ".join(expected.lower().split())


def _plain_numbers(expected: str, got: str) -> bool | None:
    """Both plain decimal numbers (thousands commas allowed): compared here, without sympy's cost."""
    try:
        a, b = (float(v.replace(",", "") if _GROUPED.fullmatch(v) else v) for v in (expected, got))
    except ValueError:
        return None
    return abs(a - b) <= 1e-9 * max(1.0, abs(a))


def _math_equal(expected: str, got: str) -> bool | None:
    """math-verify's verdict on two LaTeX/plain math values; None when either does not parse."""
    from math_verify import parse, verify

    # math-verify's time limits use signal.alarm, which works only in the main thread (as in TRL's reward).
    main = threading.current_thread() is threading.main_thread()
    if not main:
        logging.getLogger("math_verify").setLevel(logging.ERROR)
    parse_s, verify_s = (PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S) if main else (None, None)
    gold, pred = (parse(f"${value}$", parsing_timeout=parse_s) for value in (expected, got))
    if not gold or not pred:
        return None
    return bool(verify(gold, pred, timeout_seconds=verify_s))


# ---------------------------------------------------------------- a dataset's format

_PROMPT_HINTS = (("tagged", re.compile(r"answer\s*:", re.IGNORECASE)), ("boxed", re.compile(r"\\boxed")),
                 ("gsm8k", re.compile(r"####")))


def resolve_format(answer_format: str, references: list[str], prompts: list[str]) -> tuple[str, str]:
    """The format to check a dataset's answers in, and why: ``auto`` takes the format most references are
    written in, else the one the prompts ask for, else stays ``auto`` (per reply: tagged, boxed or ``####``,
    else the last number)."""
    if answer_format != "auto":
        return answer_format, "--answer_format"
    kinds = [reference_format(str(r)) for r in references]
    top = max(set(kinds), key=kinds.count) if kinds else "auto"
    if top != "auto" and kinds.count(top) * 2 > len(kinds):
        return top, f"{kinds.count(top)} of {len(kinds)} answers are written that way"
    for name, hint in _PROMPT_HINTS:
        asking = sum(bool(hint.search(str(p))) for p in prompts)
        if prompts and asking * 2 > len(prompts):
            return name, f"{asking} of {len(prompts)} prompts ask for that format"
    return "auto", "no format in the answers or prompts: the reply's Answer:/\\boxed/#### answer, else its last number"


def format_score(reply: str, answer_format: str) -> float:
    """How well a reply keeps the answer format (the GRPO ``format`` reward): 1.0 for exactly one answer in the
    format, on the last line (tagged, gsm8k) or anywhere (boxed); 0.5 for answers elsewhere or several (partial
    credit gives GRPO a gradient toward the full format); 0.0 for none. ``last_number``, ``exact`` and a bare
    ``auto`` have no format beyond the answer: 1.0 when the reply gives one (any number will do, so the reward
    then says little; pick a format the prompts ask for)."""
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if answer_format in ("tagged", "gsm8k"):
        pattern = _TAGGED if answer_format == "tagged" else _HASHES
        found = len(pattern.findall(reply))
        return 1.0 if found == 1 and pattern.match(lines[-1].strip()) else 0.5 if found else 0.0
    if answer_format == "boxed":
        found = reply.count("\\boxed{") + reply.count("\\fbox{")
        return 1.0 if found == 1 and boxed_value(reply) is not None else 0.5 if found else 0.0
    return 1.0 if reply_value(reply, answer_format) else 0.0
