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


CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read_bytes(path: Path) -> int | None:
    """A cgroup file's number of bytes; None when absent, "max" or unreadable."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_folders(root: Path) -> list[Path]:
    """This process's memory cgroup folders, innermost first, up to the root: a SLURM job or a systemd unit sits
    in a nested cgroup, and any folder on the way may hold the binding limit (v2: the "0::" line; v1: "memory")."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        lines = []
    folders = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        base = root if controllers == "" else root / "memory" if "memory" in controllers.split(",") else None
        if base is None:
            continue
        inner = base / path.strip("/") if path.strip("/") else base
        folders += [inner, *[f for f in inner.parents if f == base or base in f.parents]]
    return [f for f in dict.fromkeys(folders + [root, root / "memory"]) if f.is_dir()]


def _reclaimable(folder: Path) -> int:
    """Page cache the kernel drops before it kills (memory.stat's inactive_file): counted in the usage, not lost."""
    try:
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if line.count(" ") == 1)
    except (OSError, ValueError):
        return 0
    value = stat.get("inactive_file", stat.get("total_inactive_file", "0"))
    return int(value) if value.isdigit() else 0


def cgroup_memory(root: Path | None = None) -> tuple[int | None, int]:
    """This process's container memory limit (the lowest on its cgroup path, v2 or v1) and what that cgroup uses
    now, less its reclaimable page cache; the limit is None when there is none. A v1 "no limit" reads as a huge
    number, more than the machine has."""
    root = root or CGROUP
    found: tuple[int | None, int] = (None, 0)
    for folder in _cgroup_folders(root):
        limit = _read_bytes(folder / "memory.max")
        used = _read_bytes(folder / "memory.current")
        if limit is None and used is None:
            limit, used = _read_bytes(folder / "memory.limit_in_bytes"), _read_bytes(folder / "memory.usage_in_bytes")
        if limit is not None and limit < physical_memory() and (found[0] is None or limit < found[0]):
            found = (limit, max((used or 0) - _reclaimable(folder), 0))
    return found


def memory_limit() -> int:
    """The memory this process may use in all: the machine's, or its container's limit where that is lower (a sizing
    by the host's memory under a cgroup limit gets the process killed)."""
    limit, _ = cgroup_memory()
    return min(physical_memory(), limit) if limit else physical_memory()


def available_memory() -> int:
    """The memory free for this process now: the machine's available memory, capped by what its container's limit
    leaves."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        found = re.search(r"^MemAvailable:\s*(\d+) kB", meminfo, re.M)
        free = int(found.group(1)) * 1024 if found else physical_memory()
    except OSError:
        free = physical_memory()
    limit, used = cgroup_memory()
    return min(free, max(limit - used, 0)) if limit else free


def unitune_home() -> Path:
    return Path(os.environ.get("UNITUNE_HOME", Path.home() / ".cache" / "unitune"))


# Where each launcher says which process this is, and how many there are: torchrun and accelerate, SLURM's srun,
# Open MPI's mpirun, MPICH and Intel MPI (PMI).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
SIZE_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _launcher_int(names: tuple[str, ...], default: int) -> int:
    """The first of ``names`` set to a number. SLURM's are read only in a task srun started (SLURM_STEP_ID is set):
    an sbatch script itself sees SLURM_NTASKS of its whole allocation and SLURM_PROCID 0, though it is one process."""
    for name in names:
        if name.startswith("SLURM_") and "SLURM_STEP_ID" not in os.environ:
            continue
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def rank() -> int:
    """This process's global rank in its launch, before the process group exists (0 for a single process)."""
    return _launcher_int(RANK_VARIABLES, 0)


def world_size() -> int:
    """Processes in this launch (1 for a single process)."""
    return _launcher_int(SIZE_VARIABLES, 1)


def bare_srun() -> int:
    """The task count when ``srun`` started several copies of unitune itself, with no torchrun or accelerate to join
    them (no ``RANK``): each would train alone into one folder. 0 otherwise."""
    if "RANK" in os.environ or "SLURM_STEP_ID" not in os.environ:
        return 0
    tasks = os.environ.get("SLURM_NTASKS", "1").strip()
    return int(tasks) if tasks.isdigit() and int(tasks) > 1 else 0


def is_main_process() -> bool:
    """Rank 0 of a launch (or a single process), before the process group exists."""
    return rank() == 0


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
