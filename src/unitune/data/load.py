"""Where a dataset comes from: the bundled demo data, a Hub id, a local folder in Hub layout, or a .json/.jsonl/.csv/
.parquet file; its split names, and one split loaded."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from datasets import Dataset, DatasetDict, IterableDataset, get_dataset_split_names, load_dataset

from ..errors import UserError, first_line
from ..hub import hub_reachable

DEMO_DIR = Path(__file__).parent.parent / "assets" / "demo"
DEMO_ALIAS = "demo"
BUNDLED = {DEMO_ALIAS: DEMO_DIR, "calculator": DEMO_DIR.parent / "calculator"}  # --dataset NAME: bundled data
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or Path(name).suffix in FILE_BUILDERS


def resolve_dataset(name: str | None) -> str:
    """The dataset as a path or Hub id; the bundled demo data when omitted."""
    if name in (None, ""):
        return str(DEMO_DIR)
    if name in BUNDLED and not Path(name).exists():
        return str(BUNDLED[name])
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


def _check_file(path: Path, every_line: bool = True) -> None:
    """A data file's type and size, and (``every_line``) each JSON line parsed: a bad line named before loading."""
    if path.suffix not in FILE_BUILDERS:
        raise UserError(f"unsupported data file type '{path.suffix}' ({path}); use .json, .jsonl, .csv or .parquet")
    if path.stat().st_size == 0:
        raise UserError(f"data file is empty: {path}; add rows, or point --dataset at another file")
    if path.suffix == ".jsonl" and every_line:
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


def require_split(dataset: str, split: str) -> None:
    """One line when the dataset has no such split, listing the ones it has."""
    available = split_names(dataset)
    if split not in available:
        raise UserError(f"split '{split}' not found in {dataset}; available splits: {', '.join(available)} "
                        "(choose one with --split / --eval_split)")


def load_split(dataset: str, split: str) -> Dataset:
    """Load one split of a resolved dataset; unknown splits list the available ones."""
    path = Path(dataset)
    require_split(dataset, split)
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


def stream_split(dataset: str, split: str) -> IterableDataset:
    """One split of a resolved dataset as a stream (--streaming): rows read as they are asked for, never the whole
    split in memory or on disk. Local files stream from the files themselves; Hub datasets from the Hub."""
    path = Path(dataset)
    require_split(dataset, split)
    try:
        if path.is_file():
            _check_file(path, every_line=False)  # a stream does not read the whole file first
            return load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split=split, streaming=True)
        if not path.exists():
            _require_hub(dataset)
        return load_dataset(dataset, split=split, streaming=True)
    except (ConnectionError, OSError) as err:
        raise UserError(f"could not stream dataset '{dataset}' ({type(err).__name__}); check the name, "
                        "or pass a local folder or file") from None

