"""Files written so that a crash never leaves half of one, readable by others, and the folders no --output may replace."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def umask() -> int:
    """The process umask, read without changing it (os.umask would set it for a moment, racing other threads)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError):  # no /proc (macOS): the set-and-restore way
        current = os.umask(0)
        os.umask(current)
        return current


def public_mode(path: Path, folder: bool = False) -> None:
    """0644 for files, 0755 for folders, less what the umask removes (tempfile makes them 0600/0700)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp file, fsync and a rename: a crash never leaves half a file over a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def publish_tree(folder: Path) -> None:
    """Make everything under ``folder`` readable by others (libraries that write through temp files leave 0600)."""
    for path in Path(folder).rglob("*"):
        public_mode(path, folder=path.is_dir())
    public_mode(Path(folder), folder=True)


def temp_dir_beside(target: Path) -> Path:
    """A new, empty folder next to ``target`` (same file system, so a rename moves it into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    public_mode(tmp, folder=True)
    return tmp


def replace_dir(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target``; an old ``target`` is removed only once ``new`` is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def protected_folders(run: Path | None = None) -> dict[Path, str]:
    """Folders an --output may never be, resolved, each with why."""
    found = {Path("/").resolve(): "the root folder", Path.home().resolve(): "your home folder",
             Path.cwd().resolve(): "the current folder"}
    if run is not None:
        run = run.resolve()
        found.setdefault(run, "the run folder")
        for parent in run.parents:
            found.setdefault(parent, f"a parent of the run folder {run}")
    return found


