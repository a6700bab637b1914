"""Run folders and the files in them: the run record, atomic writes readable by others, guarded outputs."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import UserError

RUN_FILE = "unitune_run.json"
LIBRARIES = ("unitune", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")


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


def guard_output(out: Path, flag: str, run: Path | None = None) -> None:
    """Refuse an --output whose replacement would destroy a run, its checkpoints or a folder that holds others."""
    where = out.resolve()
    why = protected_folders(run).get(where)
    if why is None and run is not None and run.resolve() in where.parents:
        inside = where.relative_to(run.resolve()).parts[0]
        why = f"inside the run's checkpoint {inside}" if inside.startswith("checkpoint-") else None
    if why is None and where.is_dir() and (is_run_folder(where) or any(where.glob("checkpoint-*"))):
        why = "a training run folder"
    if why:
        raise UserError(f"{flag} {out} is {why}; replacing it would delete what is there, so this is refused even "
                        f"with --overwrite; choose a new folder for {flag}")


def is_run_folder(folder: Path) -> bool:
    """A folder training wrote: a run record or an adapter."""
    return (folder / RUN_FILE).exists() or (folder / "adapter_config.json").exists()


def library_versions() -> dict[str, str | None]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def adapter_base(folder: Path) -> str | None:
    """The base model PEFT recorded in a run's adapter_config.json, if readable."""
    try:
        return json.loads((Path(folder) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def recorded_base(run: Path) -> str | None:
    """The base model a run was trained from: unitune_run.json, else adapter_config.json. A recorded cache folder
    that is gone (a new $UNITUNE_HOME, a cleaned cache, the embedded model's cache key changed) is made again from
    what the run was given: the embedded model or the .gguf file."""
    try:
        record = read_run(run) or {}
    except (OSError, ValueError):
        record = {}
    base = record.get("base_model") or adapter_base(run)
    given = (record.get("settings") or {}).get("model_name")
    if base and not Path(base).exists() and Path(base).is_absolute() and (given is None or
                                                                           str(given).endswith(".gguf")):
        from .models.load import resolve_model

        return resolve_model(given)
    return base


def read_run(folder: Path) -> dict | None:
    path = Path(folder) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None
