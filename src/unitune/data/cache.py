"""The prepared-data cache: a training split prepared once (its conversion for the method's trainer and its length
plan), kept under the datasets cache, and loaded instead of prepared again by a second run, a --resume and every
rank after the first under torchrun.

An entry is keyed by everything that changes the prepared rows: the data's contents (a local file's or folder's
bytes; a Hub dataset's commit), the split, the method's conversion, the data settings (--columns, the row limit,
--max_bad_rows, --train_on_prompt), the tokenizer and its chat template, and --max_length. A Hub dataset whose
commit cannot be asked for (offline) is not cached. ``--no_data_cache`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets import Dataset, load_from_disk

from ..errors import warn

FORMAT = 2  # bump when what an entry holds, or how the pipeline prepares rows, changes
CHUNK = 1 << 20
NOT_KEYED = ("num_proc",)  # data settings that change how rows are prepared, not what they become


@dataclass
class Entry:
    """One prepared split, as a training run reads it back."""

    path: Path
    converted: Dataset  # what the method's trainer takes
    meta: dict  # rows read and kept, formats, bad rows by kind, the length plan, the warnings preparing them gave...


def root() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "unitune-prepared"


def _file_digest(path: Path, digest) -> None:
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)


def data_identity(dataset: str) -> str | None:
    """What the data hold: a hash of a local file's or folder's bytes, or a Hub dataset's commit (None: unknown)."""
    path = Path(dataset)
    if path.exists():
        digest = hashlib.sha256()
        files = [path] if path.is_file() else sorted(
            f for f in path.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts))
        for f in files:
            digest.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
            _file_digest(f, digest)
        return "sha256:" + digest.hexdigest()
    try:
        from huggingface_hub import HfApi

        return "hub:" + HfApi().dataset_info(dataset).sha
    except Exception:  # offline, gated, or not a Hub dataset: nothing to key on
        return None


def tokenizer_identity(tokenizer) -> str:
    """A hash of the tokenizer's vocabulary and rules, its special tokens and its chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: its whole definition as JSON
    digest.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(json.dumps(tokenizer.chat_template, default=str).encode())
    return digest.hexdigest()


def code_identity() -> str:
    """The code that prepares rows: a hash of unitune's data, template, message, mask and tokenising sources, and the versions
    of the libraries that convert them (TRL's training templates, datasets, transformers), so that a change to any of
    them prepares again rather than serve rows an older code made (FORMAT alone would need a bump nobody remembers)."""
    from importlib.metadata import version

    here = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*(here / "data").glob("*.py"), here / "templates.py", here / "masks.py",
                        here / "messages.py", here / "tokens.py"]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for package in ("datasets", "transformers", "trl", "tokenizers"):
        digest.update(f"{package}={version(package)}".encode())
    return digest.hexdigest()


def key(sources: list[tuple[str, str]], method, settings, tokenizer, max_length: int,
        mix: dict | None = None) -> str | None:
    """The entry's name for these inputs (``sources``: each dataset and split; ``mix``: how several are mixed);
    None when the contents of one cannot be named."""
    data = [data_identity(dataset) for dataset, _ in sources]
    if None in data:
        return None
    parts = {"format": FORMAT, "code": code_identity(), "data": data, "splits": [split for _, split in sources],
             "rows": method.rows, "method": method.name,
             "settings": {k: v for k, v in asdict(settings).items() if k not in NOT_KEYED},
             "tokenizer": tokenizer_identity(tokenizer), "max_length": max_length, "mix": mix}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load(name: str | None) -> Entry | None:
    """The entry named ``name``, or None when there is none (or it cannot be read: it is prepared again)."""
    if name is None:
        return None
    path = root() / name
    try:
        meta = json.loads((path / "entry.json").read_text(encoding="utf-8"))
        converted = load_from_disk(str(path / "converted"))
    except (OSError, ValueError, FileNotFoundError):
        return None
    print(f"unitune: data: prepared rows loaded from the cache ({path}); --no_data_cache prepares them again",
          flush=True)
    for message in meta["warnings"]:  # what preparing them said (rows dropped...), said again
        warn(message)
    return Entry(path, converted, meta)


def save(name: str | None, converted: Dataset, meta: dict) -> Entry | None:
    """Keep a prepared split under ``name``, and read it back from there (the trainer's own maps then keep their
    results beside it, for the next run). Written to a temporary folder, then renamed: a reader never sees half an
    entry, and when two processes race the first rename wins. None: not cached."""
    if name is None:
        return None
    path = root() / name
    temp = root() / f".{name}.{os.getpid()}.tmp"
    try:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        converted.save_to_disk(str(temp / "converted"))
        (temp / "entry.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        if not path.exists():
            os.replace(temp, path)
        return Entry(path, load_from_disk(str(path / "converted")), meta)
    except OSError as err:  # a full or read-only cache: training goes on, uncached
        warn(f"could not keep the prepared data in {root()} ({type(err).__name__}: {err}); the next run prepares "
             "them again")
        return None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
