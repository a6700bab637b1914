"""Short speed probes, run once per machine and kept in $UNITUNE_HOME/probes.

A probe's result is keyed by what decides it: the CPU model and flags, the thread count and the torch version. A
file lock makes the processes of one run measure once and agree.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ..machine import cpu_info


def probe_file(kind: str) -> Path:
    from ..machine import unitune_home

    model, flags = cpu_info()
    key = json.dumps([model, sorted(flags), torch.get_num_threads(), torch.__version__])
    return unitune_home() / "probes" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


_READ: dict[Path, dict] = {}  # probes this process already has: GRPO asks once per step


def median_seconds(run: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of ``run`` over ``repeats`` calls, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cached(kind: str, measure: Callable[[], dict]) -> tuple[dict, str]:
    """The probe's result, measured now or read from an earlier run, and where it is kept (for the plan line)."""
    from filelock import FileLock

    path = probe_file(kind)
    if path in _READ:
        return _READ[path], f"probe cached in {path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        try:
            found, where = json.loads(path.read_text()), f"probe cached in {path}"
        except (OSError, ValueError):
            with torch.random.fork_rng(devices=[]):  # a probe seeds its own tensors: the run's random stream stays
                found = measure()
            path.write_text(json.dumps(found) + "\n")
            where = f"probe measured now, kept in {path}"
    _READ[path] = found
    return found, where
