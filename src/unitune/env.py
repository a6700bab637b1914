"""`unitune env`: the environment, for bug reports (as `trl env` and `accelerate env` print theirs).

    unitune env
    unitune env --reprobe    # measure this machine's speed probes again
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .machine import cpu_info

CONSTRAINTS = Path(__file__).parent / "assets" / "constraints.txt"
LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "deepspeed")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def tested_versions() -> dict[str, str]:
    """The exact versions unitune was tested with (constraints.txt), by package name."""
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        name, sep, pinned = line.partition("==")
        if sep and not line.startswith("#"):
            found[name.strip().lower()] = pinned.strip()
    return found


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def library_lines() -> list[str]:
    tested = tested_versions()
    lines = []
    for name in LIBRARIES:
        have, want = installed(name), tested.get(name)
        if have is None:
            note = "not installed" + (" (optional)" if name in ("bitsandbytes", "deepspeed") else "")
        elif want is None or have.split("+")[0] == want:
            note = have
        else:
            note = f"{have} (tested: {want})"
        lines.append(f"{name}: {note}")
    return lines


def cpu_line() -> str:
    """The CPU model and the flags that decide bf16/AMX speed on CPU."""
    model, flags = cpu_info()
    have = [f for f in CPU_FLAGS if f in flags]
    return (f"CPU: {model}, {os.cpu_count()} logical cores; "
            f"flags: {', '.join(have) or 'none of ' + ', '.join(CPU_FLAGS)}")


def device_lines() -> list[str]:
    import torch

    lines = [f"torch CUDA build: {torch.version.cuda or 'none'}; CUDA available: {torch.cuda.is_available()}"]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        lines.append(f"  cuda:{i}: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute {props.major}."
                     f"{props.minor}")
    mps = getattr(torch.backends, "mps", None)
    lines.append(f"MPS available: {bool(mps and mps.is_available())}")
    return lines


def cache_lines() -> list[str]:
    from .machine import unitune_home

    home = unitune_home()
    models = sorted(p.name for p in (home / "models").iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if (home / "models").is_dir() else []
    return [f"UNITUNE_HOME: {home}", f"cached models: {', '.join(models) or 'none'}"]


def probe_lines(reprobe: bool = False) -> list[str]:
    """This machine's kept speed probes; with ``reprobe``, measured again first and what they found."""
    from .fast import packed_linear, probes
    from .models import precision

    if not reprobe:
        found = probes.kept()
        return [(f"speed probes kept for this machine: {', '.join(p.name for p in found) or 'none'} "
                 "(unitune env --reprobe measures them again)")]
    gone = probes.forget()
    return [f"speed probes measured again ({len(gone)} kept file(s) removed):",
            f"  dtype: {precision.cpu_dtype()[1]}", f"  packed decode weights: {packed_linear.packing_pays()[1]}"]


def report(reprobe: bool = False) -> str:
    lines = [f"unitune: {installed('unitune')}", f"Python: {platform.python_version()} ({platform.platform()})",
             *library_lines(), *device_lines(), cpu_line(), *cache_lines(), *probe_lines(reprobe)]
    return "\n".join(lines)
