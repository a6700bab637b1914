"""What the UI lets a form do. The UI runs code and touches files as the user who started it, so a page may only
name code and folders that person allowed: built-in rewards always, reward files and modules with ``--allow_code``;
files read from the runs folder (its uploads included) or an ``--allow_dir`` folder; files written in the runs folder.
Each refusal is one line naming the flag that allows it."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

READ_KEYS = ("dataset", "model_name", "chat_template", "reward_model", "teacher")  # values that may be local paths
WRITE_KEYS = ("output_dir", "resume_from_checkpoint")  # paths a job writes into (a checkpoint is resumed in place)
ALWAYS_LOCAL = ("chat_template",)  # a file, never a Hub id
PATH_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".gguf", ".jinja", ".j2", ".txt", ".py", ".yaml", ".yml")


def looks_local(value: str) -> bool:
    """Whether a value names a local path rather than a Hub id: it exists here, or it is written as a path."""
    if not value:
        return False
    if value.startswith(("/", ".", "~")) or value.endswith(PATH_SUFFIXES) or "\\" in value:
        return True
    return Path(value).expanduser().exists() or value.count("/") > 1


def within(path: str | Path, folders: list[Path]) -> bool:
    """Whether ``path``, symlinks resolved, is one of ``folders`` or lies under one of them."""
    where = Path(path).expanduser().resolve()
    return any(where == base or base in where.parents for base in (Path(f).expanduser().resolve() for f in folders))


class Gates:
    def __init__(self, root: Path, allow_code: bool = False, allow_dirs: list[str] | None = None):
        self.root = Path(root)
        self.allow_code = allow_code
        self.readable = [self.root, *map(Path, allow_dirs or [])]

    def code(self, specs: list[str] | str | None, what: str = "reward_funcs") -> None:
        """Refuse a reward (or tool) spec that loads a file or a module, unless the UI was started with --allow_code."""
        from ..train.rewards import BUILTINS

        for spec in [specs] if isinstance(specs, str) else specs or []:
            if spec and spec not in BUILTINS and not self.allow_code:
                raise UserError(f"{what} '{spec}' would run code from a file or module; the UI runs only the built-in "
                                f"rewards ({', '.join(BUILTINS)}) unless started with --allow_code")

    def read(self, key: str, value: str | None) -> None:
        if value and (key in ALWAYS_LOCAL or looks_local(str(value))) and not within(value, self.readable):
            raise UserError(f"{key} {value} lies outside the runs folder {self.root} (uploads included); move it "
                            "there, or start the UI with --allow_dir FOLDER")

    def write(self, key: str, value: str | None) -> None:
        if value and not within(value, [self.root]):
            raise UserError(f"{key} {value} lies outside the runs folder {self.root}; the UI writes only there "
                            "(leave it empty for a new folder in it)")

    def mapping(self, mapping: dict) -> None:
        """Every gate over a train (or check) form's settings, or a run record's settings on Resume."""
        self.code(mapping.get("reward_funcs"))
        for key in READ_KEYS:
            self.read(key, mapping.get(key))
        for key in WRITE_KEYS:
            self.write(key, mapping.get(key))


__all__ = ["Gates", "looks_local", "within"]
