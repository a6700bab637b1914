"""How many processes a data conversion runs in (--num_proc), and its map run in them.

Rendering rows with a chat template is Python, one core per process; the fast tokenizer already spreads a batch over
the cores by itself. A conversion's map over many rows therefore runs in one process per core (each tokenising on one
thread, so the two kinds of work do not fight for the cores), and a small one in this process: forking, sending the
function to the workers and joining their shards cost more than they save below PARALLEL_ROWS (measured, see
NOTES.md). Each worker is a fork of this process, so the cap is the memory free for one more copy of what a worker
touches (WORKER_MEMORY)."""

from __future__ import annotations

import contextlib
import os

from ..machine import available_memory

PARALLEL_ROWS = 4096
WORKER_MEMORY = 1 << 30
GAIN = 0.25  # what each process after the first adds: 2 processes on 2 cores converted 10k pairs 1.23x and 10k
# conversations 1.29x as fast as one (the tokenizer, most of the work, already used both cores in one process)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def processes(num_proc: int | None, rows: int) -> int:
    """The processes a map over ``rows`` rows runs in: ``num_proc`` (--num_proc) when set, else one per core, capped
    by free memory, for PARALLEL_ROWS rows or more."""
    if num_proc is not None:
        return max(1, min(num_proc, rows))
    if rows < PARALLEL_ROWS:
        return 1
    return max(1, min(cores(), available_memory() // WORKER_MEMORY))


def speedup(count: int) -> float:
    """How much faster ``count`` processes convert than one (for the time estimate given before a conversion)."""
    return 1 + GAIN * (count - 1)


@contextlib.contextmanager
def single_threaded_tokenizers():
    """The fast tokenizer on one thread in each forked worker (set before the fork, so it does not warn that it
    disables its threads there), as it was in this process afterwards."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def mapped(ds, function, num_proc: int | None, **kwargs):
    """``ds.map(function, **kwargs)`` in ``processes(num_proc, len(ds))`` processes. Rows keep their order. What
    ``function`` reports must come back in its output columns: a worker's counters and warnings stay in the worker."""
    count = processes(num_proc, len(ds))
    if count == 1:
        return ds.map(function, **kwargs)
    with single_threaded_tokenizers():
        return ds.map(function, num_proc=count, **kwargs)
