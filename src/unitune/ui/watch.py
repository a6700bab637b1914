"""Files the UI reads again and again, read only when they changed: every open tab asks for the runs and the running
job's output every few seconds while a job trains on the same machine. A value computed from files is kept while the
files' stamps (inode, size, mtime) stay the same; a job's output is read from its end; a run's growing log is read
on from where the last read stopped."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..train.live_log import add_entries

TAIL_LIMIT = 256 << 10  # a tail reads at most this much of a log (a progress bar without newlines is one long line)


def stamp(*paths: Path | str) -> tuple:
    """What changes when any of these files (or folders) is written, replaced, created or removed: a stat each."""
    found = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append(None)
        else:
            found.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


class Memo:
    """Values computed from files, each kept while its files' stamp is unchanged (the least recently used go first)."""

    def __init__(self, size: int = 512):
        self.size = size
        self._values: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, now: tuple, compute, expires=None):
        """compute() again only when ``now`` (taken before computing, so a write during it is seen next time)
        differs from the stamp the kept value was computed under, or when ``expires(value)`` seconds (None: never)
        have passed since: what no file says, such as a process that died."""
        with self._lock:
            kept = self._values.get(key)
            if kept is not None and kept[0] == now and (kept[2] is None or time.monotonic() < kept[2]):
                self._values.move_to_end(key)
                return kept[1]
        value = compute()
        seconds = expires(value) if expires else None
        with self._lock:
            self._values[key] = (now, value, None if seconds is None else time.monotonic() + seconds)
            self._values.move_to_end(key)
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        return value


def read_tail(path: Path | str, lines: int = 30, limit: int = TAIL_LIMIT) -> str:
    """The last ``lines`` lines of a text file, read backwards from its end in blocks (at most ``limit`` bytes)."""
    try:
        with open(path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            data, start = b"", end
            while start > 0 and data.count(b"\n") <= lines and end - start < limit:
                block = min(8192, start, limit - (end - start))
                start -= block
                handle.seek(start)
                data = handle.read(block) + data
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


_tails = Memo(64)


def tail(path: Path | str, lines: int = 30) -> str:
    """read_tail, read again only when the file changed."""
    return _tails.get((str(path), lines), stamp(path), lambda: read_tail(path, lines))


class LogFollower:
    """A JSON-lines log that only grows (unitune_log.jsonl), read on from where the last read stopped; read from the
    start again only when the file was replaced or cut. Entries as train.live_log.read_log returns them: a resume's
    "begin" entry drops what came after its checkpoint's step."""

    def __init__(self, size: int = 64):
        self.size = size
        self._logs: OrderedDict = OrderedDict()  # path -> [inode, offset, entries]
        self._lock = threading.Lock()

    def entries(self, path: Path | str) -> list[dict]:
        key = str(path)
        with self._lock:
            try:
                st = os.stat(path)
            except OSError:
                self._logs.pop(key, None)
                return []
            kept = self._logs.get(key)
            if kept is None or kept[0] != st.st_ino or st.st_size < kept[1]:
                kept = [st.st_ino, 0, []]
            if st.st_size > kept[1]:
                try:
                    with open(path, "rb") as handle:
                        handle.seek(kept[1])
                        data = handle.read(st.st_size - kept[1])
                except OSError:
                    return list(kept[2])
                complete = data[: data.rfind(b"\n") + 1]  # a line being written now is read once it ends
                kept[1] += len(complete)
                kept[2] = add_entries(kept[2], complete.decode("utf-8", errors="replace").splitlines())
            self._logs[key] = kept
            self._logs.move_to_end(key)
            while len(self._logs) > self.size:
                self._logs.popitem(last=False)
            return list(kept[2])


__all__ = ["LogFollower", "Memo", "read_tail", "stamp", "tail"]
