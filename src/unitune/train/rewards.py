"""GRPO rewards: built-ins, loading user functions, and a guard that turns their failures into clear errors.

A reward function follows TRL's signature: ``fn(prompts, completions, **columns) -> list[float]``,
where ``columns`` are the dataset's other columns (``answer``, ``chosen``, ...), one value per completion.
"""

from __future__ import annotations

import collections
import functools
import json
import re
from typing import Callable

from ..answers import check_answer, format_score
from ..errors import UserError
from ..plugins import load_named, split_spec

LENGTH_TARGET_WORDS = 40  # replies longer than this lose reward softly (the demo's answers are ~10 words)


def completion_text(completion) -> str:
    """What the model wrote, as text, whether TRL passes a string or a list of messages: the assistant messages'
    text; a tool's results (GRPO with --tools) are not the model's answer."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion if m.get("role") != "tool")


def episode_text(completion) -> str:
    """A completion with its tool calls and their results shown inline, for completions.jsonl and the report."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        if message.get("role") == "tool":
            parts.append(f"[{message.get('name', 'tool')} returned {message.get('content')}]")
            continue
        parts.append(str(message.get("content") or ""))
        for call in message.get("tool_calls") or []:
            function = call.get("function", call)
            parts.append(f"[calls {function.get('name')}({json.dumps(function.get('arguments'))})]")
    return "".join(parts)


def accuracy(prompts, completions, answer, answer_format: str = "auto", **_) -> list[float]:
    """1.0 when the completion gives the row's ``answer`` (unitune.answers.check_answer, in the run's
    ``--answer_format``)."""
    return [float(check_answer(completion_text(c), str(a), answer_format)) for c, a in zip(completions, answer)]


def format(prompts, completions, answer_format: str = "tagged", **_) -> list[float]:  # noqa: A001 - built-in name
    """1.0 when the completion gives exactly one answer in the run's answer format, last (an ``Answer:`` or
    ``####`` line); 0.5 when it gives one elsewhere or several (partial credit gives GRPO a gradient toward the
    full format). See unitune.answers.format_score."""
    return [format_score(completion_text(c), answer_format) for c in completions]


def length(prompts, completions, **_) -> list[float]:
    """0 up to LENGTH_TARGET_WORDS words, then a soft penalty: -(excess / target), floored at -1."""
    words = [len(completion_text(c).split()) for c in completions]
    return [-min(max(n - LENGTH_TARGET_WORDS, 0) / LENGTH_TARGET_WORDS, 1.0) for n in words]


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def token_f1(reference: str, text: str) -> float:
    ref, got = collections.Counter(_tokens(reference)), collections.Counter(_tokens(text))
    common = sum((ref & got).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def reference(prompts, completions, chosen, **_) -> list[float]:
    """Token-level F1 overlap with the reference reply (the last turn of ``chosen``)."""
    refs = [completion_text(c[-1:]) if isinstance(c, list) else str(c) for c in chosen]
    return [token_f1(r, completion_text(c)) for r, c in zip(refs, completions)]


BUILTINS: dict[str, Callable] = {"accuracy": accuracy, "format": format, "length": length, "reference": reference}
BUILTIN_COLUMNS = {"accuracy": "answer", "reference": "chosen"}
ANSWER_FORMATTED = ("accuracy", "format")  # the built-ins that read answers in the data's answer format


def default_rewards(columns: list[str]) -> tuple[list[str], str]:
    """Rewards to use when none are given, and why."""
    if "answer" in columns:
        return ["accuracy", "format"], "the data have an 'answer' column"
    if "chosen" in columns:
        return ["reference"], "the data have a reference reply in 'chosen'"
    raise UserError("no reward for GRPO/RLOO: the data have no 'answer' or 'chosen' column; pass --reward_funcs "
                    "(accuracy, format, length, reference, path/file.py:function or package.module:function) "
                    "or --reward_model")


def load_reward(spec: str) -> Callable:
    """A built-in name, ``path/to/file.py:function`` or ``package.module:function``."""
    if spec in BUILTINS:
        return BUILTINS[spec]
    if ":" not in spec:
        raise UserError(f"unknown reward '{spec}'; use a built-in ({', '.join(BUILTINS)}), "
                        "path/to/file.py:function or package.module:function")
    where, name = split_spec(spec)
    return load_named(where, name, "reward", "--reward_funcs")


class RewardLog:
    """Keeps a few sampled completions with each reward (first batch and the latest ones)."""

    def __init__(self, keep_first: int = 8, keep_last: int = 24):
        self.first: list[dict] = []
        self.last: collections.deque = collections.deque(maxlen=keep_last)
        self.keep_first = keep_first
        self.calls = 0

    def record(self, name: str, prompts, completions, rewards) -> None:
        if name == self._lead:  # the first function opens a new batch of rows
            self.calls += 1
            rows = [{"call": self.calls, "prompt": completion_text(p), "completion": episode_text(c),
                     "rewards": {}} for p, c in zip(prompts, completions)]
            room = self.keep_first - len(self.first)
            self.first.extend(rows[:max(room, 0)])
            self.last.extend(rows[max(room, 0):])
            self._batch = rows
        for row, reward in zip(self._batch, rewards):
            row["rewards"][name] = reward

    def rows(self) -> list[dict]:
        return self.first + list(self.last)

    def start(self, names: list[str]) -> None:
        self._lead = names[0]


def guarded(func: Callable, name: str, log: RewardLog) -> Callable:
    """Wrap a reward function: wrong lengths and exceptions become one-line errors naming it and the row."""

    @functools.wraps(func)
    def wrapper(prompts, completions, **kwargs):
        try:
            rewards = list(func(prompts=prompts, completions=completions, **kwargs))
        except Exception as err:
            row = _failing_row(func, prompts, completions, kwargs)
            where = f" on row {row} (completion: {completion_text(completions[row])[:60]!r})" if row is not None else ""
            raise UserError(f"reward function '{name}' raised {type(err).__name__}: {err}{where}; fix the "
                            "function") from None
        if len(rewards) != len(completions):
            raise UserError(f"reward function '{name}' returned {len(rewards)} values for {len(completions)} "
                            "completions; return one float per completion")
        log.record(name, prompts, completions, rewards)
        return rewards

    wrapper.__name__ = name
    return wrapper


def _failing_row(func, prompts, completions, kwargs) -> int | None:
    per_row_keys = [k for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(completions)]
    for i in range(len(completions)):
        row_kwargs = {k: ([v[i]] if k in per_row_keys else v) for k, v in kwargs.items()}
        try:
            func(prompts=[prompts[i]], completions=[completions[i]], **row_kwargs)
        except Exception:
            return i
    return None


def build_rewards(names: list[str] | None, columns: list[str], log: RewardLog,
                  answer_format: str = "tagged") -> tuple[list[Callable], str]:
    """Loaded, guarded reward functions and a line saying which and why; ``accuracy`` and ``format`` check answers
    in ``answer_format`` (resolved for the data, see answer_format_of)."""
    why = "from --reward_funcs"
    if not names:
        names, why = default_rewards(columns)
    for name in names:
        column = BUILTIN_COLUMNS.get(name)
        if column and column not in columns:
            raise UserError(f"reward '{name}' needs a '{column}' column, found [{', '.join(columns)}]; "
                            "choose another reward")
    labels = [n.rsplit(":", 1)[-1] for n in names]  # TRL logs rewards/<label>/mean
    log.start(labels)
    funcs = [functools.partial(BUILTINS[n], answer_format=answer_format) if n in ANSWER_FORMATTED else load_reward(n)
             for n in names]
    return [guarded(f, label, log) for f, label in zip(funcs, labels)], f"{', '.join(names)} ({why})"


def reward_columns(funcs, prompts, replies: list[str], rows: list[dict]) -> list[list[float]]:
    """Each reward function's scores for greedy ``replies`` to ``prompts``, called as GRPO calls it (assistant-message
    completions, the rows' other columns as keyword arguments)."""
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    columns = {k: [row[k] for row in rows] for k in rows[0] if k != "prompt"}
    return [[float(v) for v in func(prompts=prompts, completions=completions, **columns)] for func in funcs]


def weighted_mean(scores: list[list[float]], weights: list[float] | None) -> float:
    """The mean over replies of the rewards summed with their weights (None: all 1), as GRPO sums them."""
    weights = weights or [1.0] * len(scores)
    if len(weights) != len(scores):
        raise UserError(f"{len(weights)} reward weights for {len(scores)} rewards on this data; pass --reward_funcs "
                        "to score with other functions")
    replies = len(scores[0]) if scores else 0
    return sum(w * s[i] for w, s in zip(weights, scores) for i in range(replies)) / max(replies, 1)


def answer_format_of(answer_format: str, rows) -> tuple[str, str]:
    """``--answer_format`` resolved for a dataset (rows with ``answer`` and/or ``prompt``): see
    unitune.answers.resolve_format. Reads at most 200 rows."""
    from ..answers import resolve_format

    rows = [rows[i] for i in range(min(len(rows), 200))]
    references = [str(r["answer"]) for r in rows if r.get("answer") is not None]
    prompts = [completion_text(r["prompt"][-1:]) if isinstance(r.get("prompt"), list) else str(r.get("prompt", ""))
               for r in rows]
    return resolve_format(answer_format, references, prompts)
