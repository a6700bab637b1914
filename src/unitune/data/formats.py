"""The data formats unitune knows, found by their columns, and the checks a whole column needs.

Every method names the formats it accepts (``unitune.methods.METHODS``). Source formats (Alpaca, ShareGPT) are
converted into the canonical format they stand for (``canonical.py``), so only canonical ones reach a method.
"""

from __future__ import annotations

import json

from datasets import Dataset

from ..errors import UserError
from ..messages import clean_message, without_nones

# format name -> (columns it needs, what it is). Order matters: the first match wins in `detect_format`.
FORMATS: dict[str, tuple[tuple[str, ...], str]] = {
    "preference": (("prompt", "chosen", "rejected"), "explicit-prompt preference pairs"),
    "alpaca_preference": (("instruction", "chosen", "rejected"), "Alpaca-style preference pairs"),
    "preference_implicit": (("chosen", "rejected"), "implicit-prompt preference pairs"),
    "unpaired": (("prompt", "completion", "label"), "unpaired labelled completions (KTO)"),
    "alpaca": (("instruction", "output"), "Alpaca instruction/input/output"),
    "sharegpt": (("conversations",), "ShareGPT conversations"),
    "conversational": (("messages",), "conversational messages"),
    "prompt_completion": (("prompt", "completion"), "prompt/completion pairs"),
    "prompt_only": (("prompt",), "prompts only"),
    "text": (("text",), "plain text"),
}


# Source formats and the canonical format each is converted into (canonical.canonical).
CANONICAL = {"alpaca_preference": "preference", "alpaca": "conversational", "sharegpt": "conversational"}


def with_sources(accepted: tuple[str, ...]) -> list[str]:
    """Accepted canonical formats, each followed by the source formats converted into it."""
    return [n for canon in accepted for n in (canon, *(s for s, c in CANONICAL.items() if c == canon))]


def detect_format(columns: list[str], accepted: tuple[str, ...] | None = None) -> str | None:
    """The first format in ``accepted`` (default: all, most specific first; a canonical format admits the source
    formats converted into it) whose columns are present."""
    for name in with_sources(accepted) if accepted else FORMATS:
        if all(col in columns for col in FORMATS[name][0]):
            return name
    return None


def require_format(ds: Dataset, method: str, accepted: tuple[str, ...]) -> str:
    fmt = detect_format(ds.column_names, accepted)
    if fmt is None:
        needs = "; ".join(f"{name}: {'+'.join(FORMATS[name][0])}" for name in with_sources(accepted))
        raise UserError(f"the data cannot feed --method {method}: found columns [{', '.join(ds.column_names)}], "
                        f"need one of ({needs}); map your columns with --columns KEY=COLUMN or pick another --method")
    return fmt


def check_labels(ds: Dataset, fmt: str) -> None:
    """KTO labels are booleans (a whole-column type, not a broken row)."""
    if fmt != "unpaired":
        return
    for index, value in enumerate(ds["label"]):
        if not isinstance(value, bool):
            raise UserError(f"row {index}: column 'label' is {type(value).__name__} ({value!r}), KTO needs "
                            "booleans (true = desirable); convert the column to true/false")


def as_text(value) -> str:
    """Text or messages as plain text (contents joined)."""
    return value if isinstance(value, str) else " ".join(str(m.get("content", "")) for m in value)


def as_messages(value, role: str) -> list[dict]:
    """Text as one message of ``role``; messages as clean_message leaves them."""
    return [{"role": role, "content": value}] if isinstance(value, str) else [clean_message(m) for m in value]


def row_tools(row: dict) -> list[dict] | None:
    """A row's ``tools`` column (JSON schemas, as a list or a JSON string), for the chat template; None without."""
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except ValueError:
            raise UserError(f"a row's 'tools' is not JSON ({tools[:60]!r}); give a list of tool schemas") from None
    return [without_nones(tool) for tool in tools] if tools else None


def conversational(row: dict, fmt: str) -> bool:
    """Whether a canonical row holds role/content messages (rendered with the chat template), not plain strings. Each
    column is asked on its own: TRL's ``is_conversational`` reads one column of a row (any one), and an explicit-prompt
    pair may hold a plain prompt beside message replies (UltraFeedback)."""
    from trl.data_utils import is_conversational  # here: importing TRL costs `unitune check` seconds at start

    return any(is_conversational({col: row[col]}) for col in FORMATS[fmt][0] if col != "label")


def needs_chat_template(ds: Dataset, fmt: str) -> bool:
    """The rows hold role/content messages (the first row tells: a column has one type)."""
    return conversational(ds[0], fmt)
