"""The one data path: a split goes load -> column mapping -> format detection -> canonical form -> dropping the
unusable rows -> the method's conversion. Training, `unitune check` (and the web UI's Check data), the evaluator and
eval-time generation all call ``prepare``, so a split's format is found one way, and its rows are checked one way.

    prepared = prepare(dataset, "train_prefs", METHODS["dpo"], DataSettings(limit=100), tokenizer)
    prepared.rows        # canonical pairs, the unusable ones dropped (what lengths, check and the evaluator read)
    prepared.converted   # what DPOTrainer takes: the method's conversion, rendered with the chat template
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from datasets import Dataset

from ..console import LONG_DATA_ROWS, dataset_bars
from ..errors import UserError, silenced, warn
from ..templates import require_chat_template
from .canonical import canonical
from .columns import COLUMN_KEYS, apply_columns
from .convert import CONVERSIONS
from .formats import FORMATS, check_labels, detect_format, needs_chat_template, require_format
from .load import load_split
from .rows import bad_rows, drop_bad_rows
from .workers import processes, speedup


@dataclass(frozen=True)
class DataSettings:
    """What changes a split's rows on their way to a trainer or a scorer."""

    columns: dict[str, str] = field(default_factory=dict)  # --columns: {key unitune reads: the data's column}
    limit: int | None = None  # keep the first N rows
    limit_flag: str | None = None  # the flag that set ``limit``, named in a warning when the split has fewer rows
    max_bad_rows: float | None = 1.0  # the share of unusable rows that stops; None: drop them silently (check counts)
    train_on_prompt: bool = False  # SFT: loss on the prompt tokens too
    num_proc: int | None = None  # processes the conversion runs in (data.workers; None: one per core for large data)


@dataclass
class Prepared:
    """One split after the pipeline."""

    dataset: str
    split: str
    columns: list[str]  # its columns, after --columns
    read: int  # rows read: the first ``limit``
    source_format: str | None = None  # the format its columns hold; None: no format the method accepts
    format: str | None = None  # the canonical format of ``rows``
    rows: Dataset | None = None  # the canonical rows, the unusable ones dropped
    bad: dict[str, list[int]] = field(default_factory=dict)  # the unusable rows by kind (row numbers in the split)
    converted: Dataset | None = None  # the method's conversion (given a tokenizer): what its TRL trainer takes


def load(dataset: str, split: str, settings: DataSettings, required: bool = True) -> Dataset:
    """One split, its columns renamed by --columns, its first ``limit`` rows (``required``: an empty split is an
    error)."""
    ds = load_split(dataset, split)
    if settings.columns:
        ds = apply_columns(ds, settings.columns, COLUMN_KEYS)
    if required and len(ds) == 0:
        raise UserError(f"split '{split}' of {dataset} has no rows; add data or choose another split")
    if settings.limit is not None:
        if settings.limit_flag and settings.limit > len(ds):
            warn(f"--{settings.limit_flag} {settings.limit} is more than the {len(ds)} rows of split '{split}'; "
                 "using all of them")
        ds = ds.select(range(min(settings.limit, len(ds))))
    return ds


def prepare(dataset: str, split: str, method=None, settings: DataSettings = DataSettings(), tokenizer=None,
            required: bool = True) -> Prepared:
    """Run the pipeline on one split of a resolved dataset (``data.load.resolve_dataset``).

    ``method`` (a row of ``unitune.methods.METHODS``) names the formats to look for (None: any) and, given a
    ``tokenizer``, the conversion for its trainer (``convert``: training calls it itself, after its length plan).
    ``required``: an empty split, or one no accepted format fits, is an error (training); otherwise the result says
    so (``source_format`` None) and the caller decides."""
    return prepare_rows(load(dataset, split, settings, required), dataset, split, method, settings, tokenizer,
                        required)


def prepare_rows(ds: Dataset, dataset: str, split: str, method=None, settings: DataSettings = DataSettings(),
                 tokenizer=None, required: bool = True) -> Prepared:
    """``prepare`` on rows already loaded (their columns renamed by --columns): a chunk of a stream, for one."""
    prepared = Prepared(dataset, split, ds.column_names, len(ds))
    accepted = method.formats if method is not None else None
    source = detect_format(ds.column_names, accepted)
    if source is None and required:
        if method is not None:
            require_format(ds, method.name, accepted)  # one line naming what each accepted format needs
        raise UserError(f"the columns of split '{split}' ([{', '.join(ds.column_names)}]) hold no data format "
                        "unitune knows; map them with --columns KEY=COLUMN (docs/data.md lists the formats)")
    if source is None:
        return prepared
    rows, fmt = canonical(ds, source)
    if method is not None and fmt != source:
        print(f"unitune: data: split '{split}' holds {FORMATS[source][1]}, used as {FORMATS[fmt][1]}", flush=True)
    if method is not None:
        check_labels(rows, fmt)
    prepared.source_format, prepared.format, prepared.bad = source, fmt, bad_rows(rows, fmt)
    prepared.rows = drop_bad_rows(rows, prepared.bad, settings.max_bad_rows, f"split '{split}'")
    if method is not None and tokenizer is not None:
        convert(prepared, method, settings, tokenizer)
    return prepared


def convert(prepared: Prepared, method, settings: DataSettings, tokenizer) -> Dataset:
    """The pipeline's last step: the canonical rows in the shape ``method``'s trainer takes (the conversion its
    table row names), kept in ``prepared.converted``. Large data get an estimate first."""
    rows, fmt = prepared.rows, prepared.format
    if len(rows) and (method.samples or needs_chat_template(rows, fmt)):  # a sampling method renders every prompt
        require_chat_template(tokenizer, tokenizer.name_or_path or "the model")
    conversion = CONVERSIONS[method.rows]
    seconds = estimate(conversion, rows, fmt, settings, tokenizer) if len(rows) >= LONG_DATA_ROWS else None
    if seconds is not None:
        seconds /= speedup(processes(settings.num_proc, len(rows)))
        print(f"unitune: data: preparing {len(rows):,} {NOUNS[method.rows]}: about {duration(seconds)} on this "
              "machine", flush=True)
    with dataset_bars(len(rows)):
        prepared.converted = conversion(rows, fmt, settings, tokenizer) if len(rows) else rows
    return prepared.converted


NOUNS = {"conversations": "conversations", "pairs": "pairs", "pair_ids": "pairs", "unpaired": "rows",
         "prompts": "prompts"}  # what a conversion's rows are called in the estimate line
SAMPLE_ROWS = 256  # rows converted (after a few to warm the template's caches) to time the estimate


def estimate(conversion, rows: Dataset, fmt: str, settings: DataSettings, tokenizer) -> float | None:
    """Seconds the conversion of ``rows`` should take on this machine: a sample converted and timed, scaled to the
    rows (warnings silenced: the sample's rows are converted again). None when the sample alone is refused (its
    rows may all be ones the whole data has few of): the conversion of all rows decides."""
    settings = replace(settings, num_proc=1)  # the sample in this process; convert scales it to the workers
    with silenced():
        try:
            conversion(rows.select(range(8)), fmt, settings, tokenizer)  # the template's probes, once
            start = time.perf_counter()
            conversion(rows.select(range(SAMPLE_ROWS)), fmt, settings, tokenizer)
        except UserError:
            return None
    return (time.perf_counter() - start) * len(rows) / SAMPLE_ROWS


def duration(seconds: float) -> str:
    return f"{max(1, round(seconds))} s" if seconds < 90 else f"{round(seconds / 60)} min"
