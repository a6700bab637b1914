"""Several sources mixed into one training split: each loaded and put in the method's canonical form on its own
(their formats may differ), then interleaved with the given probabilities, seeded, until one source runs out
(datasets' ``first_exhausted``: every source keeps its share).

    unitune train --method sft --dataset chats.jsonl org/tulu-mix --dataset_weights 0.7 0.3

The mixed rows then go through the rest of the pipeline as one split: conversion, masks, the length plan, the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset, interleave_datasets

from ..errors import UserError, warn
from .convert import to_conversations, to_pairs, to_prompts, to_unpaired
from .formats import as_messages
from .pipeline import Prepared

STOPPING = "first_exhausted"
SOURCE = "__unitune_source"  # a column naming each mixed row's source, counted, then dropped

# the method's conversion -> the canonical format its sources are mixed in, and the step that puts rows in it
TARGETS = {"conversations": "conversational", "pairs": "preference", "pair_ids": "preference",
           "unpaired": "unpaired", "prompts": "prompt_only"}


@dataclass
class Source:
    """One mixed source, as the plan line and the run record show it."""

    dataset: str
    split: str
    format: str
    rows: int  # its usable rows
    weight: float  # its probability
    drawn: int = 0  # its rows in the mix

    def line(self, total: int) -> str:
        return (f"{self.dataset} '{self.split}' ({self.format}): {self.drawn:,} of {self.rows:,} rows, "
                f"{self.drawn / max(total, 1):.1%} (weight {self.weight:.2f})")


def _conversations(rows: Dataset, fmt: str) -> Dataset:
    if fmt == "text":
        raise UserError("cannot mix plain 'text' rows with conversations (they have no turns to mask); give every "
                        "source as conversations, or train on the text sources alone")
    if fmt == "prompt_completion":
        return rows.map(lambda row: {"messages": as_messages(row["prompt"], "user") +
                                     as_messages(row["completion"], "assistant")},
                        remove_columns=rows.column_names, desc="Preparing conversations")
    return to_conversations(rows, fmt)


def in_format(rows: Dataset, fmt: str, conversion: str) -> Dataset:
    """One source's canonical rows in the format the method's sources are mixed in (TARGETS), in one shape: a pair's
    prompt as messages, whether its source gave a string or messages."""
    target = TARGETS[conversion]
    if target == "conversational":
        return _conversations(rows, fmt)
    if target == "preference":
        return to_pairs(rows, fmt)
    if target == "unpaired":
        return to_unpaired(rows, fmt)
    return to_prompts(rows, fmt)


def _aligned(parts: list[Dataset], names: list[str]) -> list[Dataset]:
    """The sources with the columns they all have, in one schema (a column only some have is dropped, warned)."""
    common = [c for c in parts[0].column_names if all(c in p.column_names for p in parts[1:])]
    for name, part in zip(names, parts):
        dropped = [c for c in part.column_names if c not in common]
        if dropped:
            warn(f"mixing: column(s) {', '.join(dropped)} of {name} are not in every source and are left out")
    parts = [p.select_columns(common) for p in parts]
    try:
        return [parts[0], *(p.cast(parts[0].features) for p in parts[1:])]
    except (ValueError, TypeError) as err:
        raise UserError(f"the sources cannot be mixed: their rows differ in kind ({str(err).splitlines()[0][:120]}); "
                        "give every source the same kind of rows (e.g. all pairs as messages, or all as plain "
                        "text)") from None


def mix(prepared: list[Prepared], conversion: str, weights: list[float] | None, seed: int,
        limit: int | None = None) -> tuple[Prepared, list[Source]]:
    """The sources' usable rows interleaved (the first ``limit`` of them): (the mix as one prepared split, each
    source's share of it)."""
    weights = [w / sum(weights) for w in weights] if weights else [1 / len(prepared)] * len(prepared)
    formats = {p.format for p in prepared}
    if len(formats) == 1 and formats != {TARGETS[conversion]}:  # e.g. all plain text, or all prompt/completion
        fmt, parts = formats.pop(), [p.rows for p in prepared]
    else:
        fmt, parts = TARGETS[conversion], [in_format(p.rows, p.format, conversion) for p in prepared]
    parts = _aligned(parts, [p.dataset for p in prepared])
    sources = [Source(p.dataset, p.split, p.format, len(part), w) for p, part, w in zip(prepared, parts, weights)]
    for i, part in enumerate(parts):
        if not len(part):
            raise UserError(f"source {prepared[i].dataset} has no usable rows to mix; drop it from --dataset")
        parts[i] = part.add_column(SOURCE, [i] * len(part))
    mixed = interleave_datasets(parts, probabilities=weights, seed=seed, stopping_strategy=STOPPING)
    if limit is not None and limit < len(mixed):
        mixed = mixed.select(range(limit))
    for i, count in enumerate(_counts(mixed, len(parts))):
        sources[i].drawn = count
    mixed = mixed.remove_columns(SOURCE)
    bad = {f"{p.dataset}: {kind}": rows for p in prepared for kind, rows in p.bad.items()}
    return Prepared(" + ".join(p.dataset for p in prepared), "mixed", mixed.column_names,
                    sum(p.read for p in prepared), "mixed", fmt, mixed, bad), sources


def _counts(mixed: Dataset, n: int) -> list[int]:
    import pyarrow.compute as pc

    found = {c["values"]: c["counts"] for c in pc.value_counts(mixed.with_format("arrow")[SOURCE]).to_pylist()}
    return [found.get(i, 0) for i in range(n)]
