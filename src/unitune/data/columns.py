"""``--columns``: the data's own column names mapped to the keys unitune reads (prompt=question, chosen=good...)."""

from __future__ import annotations

from datasets import Dataset

from ..errors import UserError
from .formats import FORMATS

# What --columns may map to: every format's columns, Alpaca's optional ones, and GRPO's reference answer.
COLUMN_KEYS = {c for columns, _ in FORMATS.values() for c in columns} | {"input", "system", "history", "answer"}


def apply_columns(ds: Dataset, mapping: dict[str, str], keys: set[str]) -> Dataset:
    """Rename the data's columns to the keys unitune reads; a key already present is replaced by the mapped one."""
    repeated = [c for c in set(mapping.values()) if list(mapping.values()).count(c) > 1]
    if repeated:
        raise UserError(f"--columns maps column '{repeated[0]}' to more than one key; map each column once")
    for key, column in mapping.items():
        if key not in keys:
            raise UserError(f"unknown --columns key '{key}'; keys are: {', '.join(sorted(keys))}")
        if column not in ds.column_names:
            raise UserError(f"--columns maps {key} to '{column}', which is not a column; the data has: "
                            f"{', '.join(ds.column_names)}")
    clashes = [key for key, column in mapping.items() if key in ds.column_names and key != column]
    ds = ds.remove_columns([k for k in clashes if k not in mapping.values()])
    return ds.rename_columns({column: key for key, column in mapping.items() if key != column})
