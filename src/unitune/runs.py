"""The run folder: guarding it, recording the run, atomic writes."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import UserError

RUN_FILE = "unitune_run.json"
LIBRARIES = ("unitune", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp file and a rename: a crash never leaves half a file over a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def is_finished_run(folder: Path) -> bool:
    return (folder / RUN_FILE).exists() or (folder / "adapter_config.json").exists()


def prepare_output_dir(output_dir: str, overwrite: bool, resume: bool) -> Path:
    """Refuse to train over a finished run (unless asked) and fail early if the folder is not writable."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file; pass a folder path")
    if out.is_dir() and is_finished_run(out) and not (overwrite or resume):
        raise UserError(f"{out} already holds a finished run; pass --overwrite_output_dir to train over it, "
                        "--resume to continue it, or choose another --output_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UserError(f"cannot write to --output_dir {out} ({err.strerror}); choose a writable folder") from None
    return out


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


def read_run(folder: Path) -> dict | None:
    path = Path(folder) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None
