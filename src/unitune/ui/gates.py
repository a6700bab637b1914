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
    """Whether a value names a local path rather than a Hub id: it exists here, or it is written as a path (a value
    no path can be, "~nosuchuser/x" or one with a NUL, counts as one, and is refused as lying outside)."""
    if not value:
        return False
    if value.startswith(("/", ".", "~", "-")) or value.endswith(PATH_SUFFIXES) or "\\" in value:
        return True
    try:
        return Path(value).expanduser().exists() or value.count("/") > 1
    except (OSError, RuntimeError, ValueError):
        return True


def within(path: str | Path, folders: list[Path]) -> bool:
    """Whether ``path``, symlinks resolved, is one of ``folders`` or lies under one of them."""
    try:
        where = Path(path).expanduser().resolve()
        bases = [Path(f).expanduser().resolve() for f in folders]
    except (OSError, RuntimeError, ValueError):  # no such user (~x), a NUL, a name too long: not a place we allow
        return False
    return any(where == base or base in where.parents for base in bases)


class Gates:
    def __init__(self, root: Path, allow_code: bool = False, allow_dirs: list[str] | None = None):
        self.root = Path(root)
        self.allow_code = allow_code
        self.readable_dirs = [self.root, *map(Path, allow_dirs or [])]

    def code(self, specs: list[str] | str | None, what: str = "reward_funcs") -> None:
        """Refuse a reward, tool or environment spec that loads a file or a module, unless the UI was started with
        --allow_code."""
        from ..tools import BUILTIN_TOOLS
        from ..train.rewards import BUILTINS

        builtins = BUILTIN_TOOLS if what in ("tools", "environment") else BUILTINS
        for spec in [specs] if isinstance(specs, str) else specs or []:
            if spec and spec not in builtins and not self.allow_code:
                raise UserError(f"{what} '{spec}' would run code from a file or module; the UI runs only the built-in "
                                f"ones ({', '.join(builtins) or 'none'}) unless started with --allow_code")

    def read(self, key: str, value: str | list | None) -> None:
        if isinstance(value, list):  # several --dataset sources: each one passes
            for item in value:
                self.read(key, item)
            return
        if value and (key in ALWAYS_LOCAL or looks_local(str(value))) and not within(value, self.readable_dirs):
            raise UserError(f"{key} {value} lies outside the runs folder {self.root} (uploads included); move it "
                            "there, or start the UI with --allow_dir FOLDER")

    def readable(self, key: str, value: str | None) -> bool:
        try:
            self.read(key, value)
        except UserError:
            return False
        return True

    def run(self, folder: Path) -> None:
        """A run the page names (to evaluate, export or chat with): its folder name must not read as a flag, and
        the base model and data its record names (anyone may have written it) pass the read gate."""
        from ..train.records import record_of

        if Path(folder).name.startswith("-"):
            raise UserError(f"run folder '{Path(folder).name}' starts with '-', which a command line reads as a flag; "
                            "rename it")
        record = record_of(Path(folder)) or {}
        given = record.get("settings") or record  # what was asked for (None: the embedded model, the bundled data)
        for key in READ_KEYS:
            self.read(key, given.get(key))

    def write(self, key: str, value: str | None) -> None:
        if value and not within(value, [self.root]):
            raise UserError(f"{key} {value} lies outside the runs folder {self.root}; the UI writes only there "
                            "(leave it empty for a new folder in it)")

    def mapping(self, mapping: dict) -> None:
        """Every gate over a train (or check) form's settings, or a run record's settings on Resume."""
        for key in ("reward_funcs", "tools", "environment"):
            self.code(mapping.get(key), key)
        for key in READ_KEYS:
            self.read(key, mapping.get(key))
        for key in WRITE_KEYS:
            self.write(key, mapping.get(key))


__all__ = ["Gates", "looks_local", "within"]
