"""The one data path: a split goes load -> column mapping -> format detection -> canonical form -> dropping the
unusable rows -> the method's conversion. Training, `unitune check`, the evaluator, eval-time generation and the web
UI all call ``prepare``, so a split's format is found one way, and its rows are checked one way.

    prepared = prepare(dataset, "train_prefs", METHODS["dpo"], DataSettings(limit=100), tokenizer)
    prepared.rows        # canonical pairs, the unusable ones dropped (what lengths, check and the evaluator read)
    prepared.converted   # what DPOTrainer takes: the method's conversion, rendered with the chat template
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset

from ..console import dataset_bars
from ..errors import UserError, warn
from ..templates import require_chat_template
from .canonical import canonical
from .columns import COLUMN_KEYS, apply_columns
from .formats import check_labels, detect_format, needs_chat_template, require_format
from .load import load_split
from .rows import bad_rows, drop_bad_rows


@dataclass(frozen=True)
class DataSettings:
    """What changes a split's rows on their way to a trainer or a scorer."""

    columns: dict[str, str] = field(default_factory=dict)  # --columns: {key unitune reads: the data's column}
    limit: int | None = None  # keep the first N rows
    limit_flag: str | None = None  # the flag that set ``limit``, named in a warning when the split has fewer rows
    max_bad_rows: float | None = 1.0  # the share of unusable rows that stops; None: only count them (check)
    train_on_prompt: bool = False  # SFT: loss on the prompt tokens too


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


def load(dataset: str, split: str, settings: DataSettings) -> Dataset:
    """One split, its columns renamed by --columns, its first ``limit`` rows."""
    ds = load_split(dataset, split)
    if settings.columns:
        ds = apply_columns(ds, settings.columns, COLUMN_KEYS)
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
    ``tokenizer``, converts the rows for its trainer. ``required``: an empty split, or one no accepted format fits,
    is an error (training); otherwise the result says so (``source_format`` None) and the caller decides."""
    ds = load(dataset, split, settings)
    if required and len(ds) == 0:
        raise UserError(f"split '{split}' of {dataset} has no rows; add data or choose another split")
    prepared = Prepared(dataset, split, ds.column_names, len(ds))
    accepted = method.formats if method is not None else None
    if required and method is not None:
        source = require_format(ds, method.name, accepted)
    else:
        source = detect_format(ds.column_names, accepted)
    if source is None:
        return prepared
    rows, fmt = canonical(ds, source)
    if method is not None:
        check_labels(rows, fmt)
    prepared.source_format, prepared.format, prepared.bad = source, fmt, bad_rows(rows, fmt)
    prepared.rows = drop_bad_rows(rows, prepared.bad, settings.max_bad_rows, f"split '{split}'")
    if method is not None and tokenizer is not None:
        if method.samples_completions or needs_chat_template(prepared.rows, fmt):  # GRPO renders every prompt
            require_chat_template(tokenizer, tokenizer.name_or_path or "the model")
        with dataset_bars(len(prepared.rows)):
            prepared.converted = method.module.prepare(prepared.rows, fmt, settings, tokenizer)
    return prepared
