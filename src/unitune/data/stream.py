"""--streaming: a training split read as a stream (datasets' IterableDataset over local files or the Hub), never
whole in memory or on disk. The stream is cut into chunks of CHUNK_ROWS rows, and each chunk goes through the same
pipeline as a loaded split (``pipeline.prepare_rows``: formats, canonical form, unusable rows, the method's
conversion and its mask checks) as the trainer asks for rows. Unusable rows are skipped and counted.

    unitune train --method sft --dataset big.jsonl --streaming --max_steps 2000

The converted rows are shuffled in a buffer of SHUFFLE_BUFFER rows, seeded by --seed (and the epoch), so a resumed
run reads the same rows in the same order and the Trainer skips those its checkpoint already trained on.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, replace
from typing import Iterator

from datasets import Dataset, IterableDataset

from ..errors import UserError, silenced
from .columns import COLUMN_KEYS, apply_columns
from .lengths import without_counts
from .load import stream_split
from .pipeline import DataSettings, Prepared, prepare_rows

CHUNK_ROWS = 1000
SHUFFLE_BUFFER = 10_000


@dataclass
class Streamed:
    """A streamed training split."""

    rows: IterableDataset  # the converted rows, made as the trainer reads them
    first: Prepared  # the first chunk, prepared now: the formats, and the rows the plan's lengths are measured on
    counts: dict = field(default_factory=dict)  # rows read, unusable and made so far (grows as the stream is read)


def source(dataset: str, split: str, settings: DataSettings) -> IterableDataset:
    """The split as a stream, its columns renamed by --columns, its first ``limit`` rows."""
    ds = stream_split(dataset, split)
    if settings.columns:
        if ds.column_names is None:
            raise UserError(f"the stream of {dataset} does not say its columns before its rows, so --columns cannot "
                            "rename them; drop --streaming, or rename the columns in the data")
        ds = apply_columns(ds, settings.columns, COLUMN_KEYS)
    return ds.take(settings.limit) if settings.limit is not None else ds


def chunks(ds: IterableDataset, size: int | None = None) -> Iterator[Dataset]:
    """The stream as Datasets of ``size`` rows (CHUNK_ROWS), the last one shorter."""
    size, batch = size or CHUNK_ROWS, []
    for row in ds:
        batch.append(row)
        if len(batch) == size:
            yield Dataset.from_list(batch)
            batch = []
    if batch:
        yield Dataset.from_list(batch)


def first_rows(dataset: str, split: str, settings: DataSettings, rows: int) -> Dataset:
    """The first ``rows`` rows of the stream (check --streaming)."""
    found = next(chunks(source(dataset, split, settings), rows), None)
    if found is None:
        raise UserError(f"split '{split}' of {dataset} has no rows; add data or choose another split")
    return found


def stream(dataset: str, split: str, method, settings: DataSettings, tokenizer, seed: int) -> Streamed:
    """The split streamed and converted for ``method``'s trainer, chunk by chunk; its first chunk prepared now (a
    format the method cannot take, or a template that cannot mask it, stops here, before the model loads)."""
    # unusable rows: skipped and counted; a chunk is prepared in this process (no workers forked mid-training)
    each = replace(settings, limit=None, max_bad_rows=None, num_proc=1)
    counts = {"read": 0, "unusable": 0, "examples": 0}

    def prepared(quiet: bool) -> Iterator[Prepared]:
        """Each chunk prepared; ``quiet``: its lines and warnings not given (the first chunk, prepared eagerly for
        the plan, gave them; the rows skipped are counted)."""
        for chunk in chunks(source(dataset, split, settings)):
            with (silenced() if quiet else contextlib.nullcontext()), \
                    (contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()):
                done = prepare_rows(chunk, dataset, split, method, each, tokenizer)
            counts["read"] += done.read
            counts["unusable"] += len({n for rows in done.bad.values() for n in rows})
            counts["examples"] += len(done.converted)
            yield done

    first = next(prepared(quiet=False))
    if first.converted is None or not len(first.converted):
        raise UserError(f"the first {CHUNK_ROWS} rows of split '{split}' of {dataset} hold no usable row; check the "
                        "data with `unitune check --streaming`")

    def generate():
        for key in counts:  # each pass (epoch) counts again
            counts[key] = 0
        for done in prepared(quiet=True):
            yield from without_counts(done.converted)

    rows = IterableDataset.from_generator(generate, features=without_counts(first.converted).features)
    return Streamed(rows.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER), first, counts)
