"""This machine and this process: the CPU and its flags, the memory, the processes of a launch, unitune's home folder
(``$UNITUNE_HOME``) and the library versions."""

from __future__ import annotations

import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def cpu_info() -> tuple[str, set[str]]:
    """The CPU model and its flags (Linux /proc/cpuinfo; elsewhere the machine name and no flags)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    return (model.group(1).strip() if model else platform.machine()), set(flags.group(1).split() if flags else ())


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def unitune_home() -> Path:
    return Path(os.environ.get("UNITUNE_HOME", Path.home() / ".cache" / "unitune"))


def world_size() -> int:
    """Processes in this launch (torchrun and accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch (or a single process), before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def uses_deepspeed() -> bool:
    """Whether ``accelerate launch`` started this process with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


LIBRARIES = ("unitune", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")


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
