"""Short speed probes, run once per machine and kept in $UNITUNE_HOME/probes for 30 days.

A probe's result is keyed by the machine that measured it: the architecture, the CPU's identity (x86's model name,
family and model; ARM's implementer and part, or the board's name; macOS's brand string), its flags, the core and
thread counts and the torch version. A file lock makes the processes of one run measure once and agree. A probe that
ran while the machine was busy (its threads got less than ``MIN_SHARE`` of the CPU time they wanted) is refused: its result
is not kept (only the refusal, for ``REFUSAL_S``, so that the processes of a launch agree) and the caller falls back
to its safe default. A file that is broken, partial, from another machine or older than
``MAX_AGE_S`` is measured again, and ``unitune env --reprobe`` measures this machine's probes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import torch

from ..files import write_json_atomic
from ..machine import cpu_info

MAX_AGE_S = 30 * 24 * 3600  # a probe older than 30 days is measured again (a driver, BIOS or kernel changes speed)
MIN_SHARE = 0.8  # of the CPU time the probe's threads wanted: on an idle 2-core EPYC both probes got 98-99.7%, with
# one busy process beside them 59-65% (and timings up to twice as long)
REFUSAL_S = 600  # a refusal is kept this long, so that the processes of one launch agree; then measured again
MIN_WALL_S = 0.05  # a shorter probe's CPU share is not judged: the clocks' resolution is too coarse
CPUINFO = Path("/proc/cpuinfo")
# the /proc/cpuinfo lines that name the CPU: x86 has "model name", family, model and stepping; ARM has no model name
# but an implementer, part and variant, and boards a "Hardware" or "Model" line; "Features" are ARM's flags
IDENTITY_LINES = ("model name", "cpu family", "model", "stepping", "CPU implementer", "CPU architecture",
                  "CPU variant", "CPU part", "CPU revision", "Hardware", "Model", "Features")

_READ: dict[Path, dict] = {}  # probes this process already has: GRPO asks once per step


def cpu_identity() -> dict[str, str]:
    """What names this CPU: the /proc/cpuinfo lines of ``IDENTITY_LINES`` (each value once, in order, over all cores:
    big.LITTLE ARM chips have two parts), macOS's brand string, else what ``platform`` says."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^([^:\n]+?)\s*:\s*(.*)$", text, re.MULTILINE):
        if name in IDENTITY_LINES and value.strip() and value.strip() not in found.setdefault(name, []):
            found[name].append(value.strip())
    identity = {name: ",".join(values) for name, values in found.items()}
    if platform.system() == "Darwin":
        identity["brand"] = sysctl("machdep.cpu.brand_string")
    if not identity:
        identity["processor"] = platform.processor()
    return identity


def sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def identity() -> dict:
    """The machine a probe's result holds for."""
    return {"arch": platform.machine(), "cpu": cpu_identity(), "flags": sorted(cpu_info()[1]),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def _key(machine: dict) -> str:
    return hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]


def probe_file(kind: str, machine: dict | None = None) -> Path:
    from ..machine import unitune_home

    return unitune_home() / "probes" / f"{kind}-{_key(machine or identity())}.json"


def median_seconds(run: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of ``run`` over ``repeats`` calls, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_queue_seconds() -> tuple[float, float] | None:
    """Seconds this process's threads ran on a CPU and waited in a run queue for one (Linux's per-thread schedstat);
    None where the kernel does not count them."""
    ran = waited = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            on_cpu, in_queue = Path(f"/proc/self/task/{task}/schedstat").read_text().split()[:2]
            ran, waited = ran + int(on_cpu), waited + int(in_queue)
        except (OSError, ValueError):
            continue
    return (ran / 1e9, waited / 1e9) if ran else None


def usable_threads() -> int:
    """The threads torch computes with, at most the CPUs this process may run on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cpus))


def cpu_clock() -> tuple[float, float, float]:
    """Seconds this process's threads ran, seconds they wanted to run, and a wall clock. Linux counts what they
    wanted: their time on a CPU plus their time waiting for one (a thread that sleeps wants nothing, so a probe's
    one-threaded phases count as idle); elsewhere every usable thread is taken to want the whole wall time."""
    wall, queued = time.perf_counter(), run_queue_seconds()
    if queued:
        return queued[0], queued[0] + queued[1], wall
    return time.process_time(), wall * usable_threads(), wall


def measure_idle(measure: Callable[[], dict]) -> tuple[dict, float | None]:
    """Run ``measure`` and return its result and the share of the CPU time its threads wanted that they got (None
    when it ran too briefly to judge): under 1 when other processes held the cores."""
    ran, wanted, wall = cpu_clock()
    with torch.random.fork_rng(devices=[]):  # a probe seeds its own tensors: the run's random stream stays
        found = measure()
    ran_end, wanted_end, wall_end = cpu_clock()
    if wall_end - wall < MIN_WALL_S or wanted_end <= wanted:
        return found, None
    return found, min(1.0, max(0.0, (ran_end - ran) / (wanted_end - wanted)))


def _usable(record, machine: dict, valid: Callable[[dict], bool], in_process: bool = False) -> bool:
    """A record this machine can use: its own and recent (a result under 30 days old with every field its caller reads,
    or a refusal under ``REFUSAL_S`` old; in the process that read it, a refusal holds for the process's life)."""
    if not isinstance(record, dict) or record.get("machine") != machine:
        return False
    measured = record.get("measured_at")
    if not isinstance(measured, (int, float)) or isinstance(measured, bool):
        return False
    age = time.time() - measured
    if isinstance(record.get("refused"), str):
        return in_process or -60 <= age <= REFUSAL_S
    return isinstance(record.get("result"), dict) and -60 <= age <= MAX_AGE_S and valid(record["result"])


def _answer(record: dict, path: Path, now: bool) -> tuple[dict | None, str]:
    when = datetime.fromtimestamp(record["measured_at"])
    if "refused" in record:
        return None, f"{record['refused']}; not kept, measured again after {when + timedelta(seconds=REFUSAL_S):%H:%M}"
    return record["result"], (f"probe measured now, kept in {path}" if now
                              else f"probe of {when:%Y-%m-%d} cached in {path}")


def cached(kind: str, measure: Callable[[], dict],
           valid: Callable[[dict], bool] = lambda found: True) -> tuple[dict | None, str]:
    """The probe's result, read from an earlier run or measured now, and where it is kept (for the plan line). None
    when the probe was refused (the machine was busy): the string says why, and the caller takes its safe default.
    ``valid`` says whether a kept result has every field the caller reads (else it is measured again)."""
    from filelock import FileLock

    machine = identity()
    path = probe_file(kind, machine)
    if _usable(_READ.get(path), machine, valid, in_process=True):
        return _answer(_READ[path], path, now=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = None
        if _usable(record, machine, valid):
            _READ[path] = record
            return _answer(record, path, now=False)
        found, share = measure_idle(measure)
        record = {"kind": kind, "measured_at": time.time(), "machine": machine, "cpu_share": share, "result": found}
        if share is not None and share < MIN_SHARE:
            # only the refusal is kept, for a few minutes: the other processes of this run take it too and agree
            record.pop("result")
            record["refused"] = (f"the probe was refused: the machine was busy while it ran (its threads got {share:.0%} "
                                 f"of the CPU time they wanted, under {MIN_SHARE:.0%})")
        write_json_atomic(path, record)
    _READ[path] = record
    return _answer(record, path, now=True)


def kept() -> list[Path]:
    """This machine's kept probe files, of every kind."""
    path = probe_file("any")
    return sorted(path.parent.glob(f"*-{path.stem.rsplit('-', 1)[1]}.json")) if path.parent.is_dir() else []


def forget() -> list[Path]:
    """Remove this machine's kept probes, so that the next ``cached`` measures them again; the files removed."""
    gone = kept()
    for path in gone:
        path.unlink(missing_ok=True)
    _READ.clear()
    return gone
