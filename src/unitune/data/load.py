"""Data: load (bundled demo, Hub id, local folder, file), detect the format, validate, convert.

Every method names the formats it accepts (``methods.METHODS``); this module turns any of them into
the shape the method's TRL trainer wants, in one place.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from datasets import Dataset, DatasetDict, get_dataset_split_names, load_dataset

from ..errors import UserError, first_line, warn
from ..hub import hub_reachable

DEMO_DIR = Path(__file__).parent.parent / "assets" / "demo"
DEMO_ALIAS = "demo"
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

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

# Source formats and the canonical format each is converted into (normalize.canonical).
CANONICAL = {"alpaca_preference": "preference", "alpaca": "conversational", "sharegpt": "conversational"}


# ---------------------------------------------------------------- loading


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or Path(name).suffix in FILE_BUILDERS


def resolve_dataset(name: str | None) -> str:
    """The dataset as a path or Hub id; the bundled demo data when omitted."""
    if name in (None, "", DEMO_ALIAS):
        return str(DEMO_DIR)
    if _is_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise UserError(f"dataset path not found: {name}; check the path, or omit --dataset to use the "
                            "bundled demo data")
        return str(path.resolve())
    return name


def _require_hub(name: str) -> None:
    if not hub_reachable():
        raise UserError(f"cannot reach the Hugging Face Hub to load dataset '{name}'; pass a local folder or "
                        "file (.json/.jsonl/.csv/.parquet), or omit --dataset to use the bundled demo data")


def _check_file(path: Path) -> None:
    if path.suffix not in FILE_BUILDERS:
        raise UserError(f"unsupported data file type '{path.suffix}' ({path}); use .json, .jsonl, .csv or .parquet")
    if path.stat().st_size == 0:
        raise UserError(f"data file is empty: {path}; add rows, or point --dataset at another file")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}: line {number} is not valid JSON ({err.msg}); "
                                    "fix or remove that line") from None


def split_names(dataset: str) -> tuple[str, ...]:
    """Split names of a resolved dataset. A single file has one split, ``train``; a local folder's are those of
    its current files (read once per contents, see _local_splits)."""
    path = Path(dataset)
    if path.is_file():
        return ("train",)
    if path.is_dir():
        try:
            return tuple(_local_splits(dataset, _stamp(path)))
        except Exception as err:  # datasets' errors for unreadable files vary (ValueError, DatasetGenerationError...)
            raise UserError(f"could not read dataset folder '{dataset}': {first_line(err)}; check its files") from None
    return _hub_split_names(dataset)


@functools.lru_cache(maxsize=64)
def _hub_split_names(dataset: str) -> tuple[str, ...]:
    """Cached: training and evaluation ask several times per dataset, and on the Hub each ask is a request."""
    _require_hub(dataset)
    try:
        return tuple(get_dataset_split_names(dataset))
    except (ConnectionError, OSError) as err:
        raise UserError(f"could not read dataset '{dataset}' ({type(err).__name__}: {err}); check the name, "
                        "or pass a local folder or file") from None


def _stamp(path: Path) -> tuple:
    """What identifies the current contents of a local dataset: its files' sizes and modification times."""
    files = [path] if path.is_file() else sorted(
        f for f in path.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts))
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


@functools.lru_cache(maxsize=4)
def _local_splits(dataset: str, stamp: tuple) -> DatasetDict:
    """Every split of a local file or folder, read once per process and contents (``stamp``): the datasets
    library builds all of a folder's splits on each load, and training and evaluation ask for several. Always
    re-read from the files, never from the datasets cache, which can serve a stale copy of edited local files."""
    path = Path(dataset)
    if path.is_file():
        return load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), download_mode="force_redownload")
    return load_dataset(dataset, download_mode="force_redownload")


def load_split(dataset: str, split: str) -> Dataset:
    """Load one split of a resolved dataset; unknown splits list the available ones."""
    path = Path(dataset)
    available = split_names(dataset)
    if split not in available:
        raise UserError(f"split '{split}' not found in {dataset}; available splits: {', '.join(available)} "
                        "(choose one with --split / --eval_split)")
    try:
        if path.is_file():
            _check_file(path)
        if path.exists():
            return _local_splits(dataset, _stamp(path))[split]
        return load_dataset(dataset, split=split)
    except (ConnectionError, OSError) as err:
        raise UserError(f"could not load dataset '{dataset}' ({type(err).__name__}); check the name, "
                        "or pass a local folder or file") from None
    except ValueError as err:
        raise UserError(f"could not read dataset '{dataset}': {str(err).splitlines()[0]}; check the file") from None


# ---------------------------------------------------------------- detection and validation


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


# ---------------------------------------------------------------- conversion


def as_messages(value, role: str) -> list[dict]:
    """Text as one message of ``role``; messages as plain {role, content} dicts."""
    return [{"role": role, "content": value}] if isinstance(value, str) else [
        {"role": m["role"], "content": m["content"]} for m in value]


def _split_shared(chosen: list[dict], rejected: list[dict]) -> int:
    """Length of the shared leading turns of two conversations."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return n


def pair_row(row: dict, fmt: str) -> dict:
    """One preference row as {prompt, chosen, rejected}: messages lists, or plain strings for plain text."""
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if fmt == "preference" and isinstance(row["prompt"], str):
            return {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}
        chosen, rejected = as_messages(chosen, "assistant"), as_messages(rejected, "assistant")
    chosen, rejected = as_messages(chosen, "assistant"), as_messages(rejected, "assistant")
    shared = _split_shared(chosen, rejected)
    if fmt == "preference":
        prompt = as_messages(row["prompt"], "user")
        # UltraFeedback repeats the prompt turn at the start of chosen/rejected: drop it there.
        if chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
            shared = len(prompt)
        elif shared and chosen[:shared][-len(prompt):] == prompt:  # after a system turn (or earlier turns): keep them
            prompt = chosen[:shared]
        elif shared and chosen[:shared] != prompt:
            shared = 0
    else:
        prompt = chosen[:shared]
        if not prompt:
            raise UserError("implicit-prompt pairs must share their opening turns (the prompt); add a 'prompt' "
                            "column or start chosen/rejected with the same user turn")
    return {"prompt": prompt, "chosen": chosen[shared:], "rejected": rejected[shared:]}


def to_pairs(ds: Dataset, fmt: str) -> Dataset:
    """Preference data for DPO/ORPO, with pairs whose chosen equals rejected dropped (warned)."""
    pairs = ds.map(lambda row: pair_row(row, fmt), remove_columns=ds.column_names, desc="Preparing pairs")
    same = [i for i, row in enumerate(pairs) if row["chosen"] == row["rejected"]]
    if same:
        if len(same) == len(pairs):
            raise UserError("every pair has chosen equal to rejected, nothing to learn from; check the data")
        warn(f"dropping {len(same)} pair(s) whose chosen reply equals the rejected one "
                      f"(first: row {same[0]})")
        drop = set(same)
        pairs = pairs.select([i for i in range(len(pairs)) if i not in drop])
    return pairs


def to_unpaired(ds: Dataset, fmt: str) -> Dataset:
    """KTO rows {prompt, completion, label}; preference pairs are unpaired into one row per reply."""
    if fmt == "unpaired":
        return ds.select_columns(["prompt", "completion", "label"])
    pairs = to_pairs(ds, fmt)
    rows = []
    for row in pairs:
        rows.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        rows.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    return Dataset.from_list(rows)


def to_conversations(ds: Dataset, fmt: str) -> Dataset:
    """SFT rows: conversations stay; preference pairs train on prompt + chosen."""
    if fmt == "preference" or fmt == "preference_implicit":
        def join(row):
            pair = pair_row(row, fmt)
            return {"messages": as_messages(pair["prompt"], "user") + as_messages(pair["chosen"], "assistant")}
        return ds.map(join, remove_columns=ds.column_names, desc="Preparing conversations")
    keep = {"conversational": ["messages"], "prompt_completion": ["prompt", "completion"], "text": ["text"]}[fmt]
    return ds.select_columns(keep)


def prompt_messages(row: dict, fmt: str) -> list[dict]:
    """The prompt of any row as messages: the conversation up to its last assistant turn."""
    if fmt == "conversational":
        messages = as_messages(row["messages"], "user")
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        return messages[:last]
    if fmt == "preference_implicit":
        return pair_row(row, fmt)["prompt"]
    return as_messages(row["prompt"], "user")


def row_views(row: dict, fmt: str) -> tuple[list[dict], list[list[dict]]]:
    """(prompt messages, replies) of one row in any format."""
    if fmt in ("preference", "preference_implicit"):
        pair = pair_row(row, fmt)
        return as_messages(pair["prompt"], "user"), [as_messages(pair["chosen"], "assistant"),
                                                   as_messages(pair["rejected"], "assistant")]
    if fmt == "conversational":
        prompt = prompt_messages(row, fmt)
        return prompt, [list(row["messages"])[len(prompt):]]
    if fmt in ("unpaired", "prompt_completion"):
        return as_messages(row["prompt"], "user"), [as_messages(row["completion"], "assistant")]
    if fmt == "prompt_only":
        return as_messages(row["prompt"], "user"), []
    return [], [as_messages(row["text"], "assistant")]


def to_prompts(ds: Dataset, fmt: str) -> Dataset:
    """GRPO rows: ``prompt`` as messages; other columns stay for reward functions (e.g. ``answer``)."""
    return ds.map(lambda row: {"prompt": prompt_messages(row, fmt)}, desc="Preparing prompts")


# ---------------------------------------------------------------- chat templates


def needs_chat_template(ds: Dataset, fmt: str) -> bool:
    """Rows hold role/content messages (rendered with the chat template), not plain strings."""
    return any(isinstance(ds[0][col], list) for col in FORMATS[fmt][0] if col != "label")


def require_chat_template(tokenizer, model: str) -> None:
    if not tokenizer.chat_template:
        raise UserError(f"the tokenizer of {model} has no chat template, which conversational data need; "
                        "use a chat model, pass one with --chat_template FILE, or give the data as plain 'text' "
                        "or prompt/completion strings")
