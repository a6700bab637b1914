"""The run folder's lock: one process trains in a folder at a time, and a second train, resume, merge or export of
it refuses in one line that names the process holding it.

The lock is ``<run>/unitune.lock``: created with O_EXCL, held with an exclusive ``flock`` on a descriptor kept open
while training, and holding the holder's pid, host and start time for the messages. The kernel drops an flock when
its process dies however it dies, so on one host a dead holder is known exactly (a reused pid does not fool it) and
its lock is taken over. A lock written on another host cannot be checked from here and is respected. Under
torchrun/accelerate only rank 0 takes it; the other ranks refuse only a lock of another launch (``check_free``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

from ..errors import Interrupted, UserError
from ..machine import world_size

LOCK_FILE = "unitune.lock"
BUSY_RETRIES = 10  # x 0.05 s: another process's holder() holds a shared flock for a moment while it looks


def launch_id() -> str | None:
    """What the processes of one torchrun/accelerate launch share and no other running launch has: its rendezvous
    address (a port is bound by one launch at a time)."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if world_size() < 2:  # one process: sbatch scripts export these for every command, export and merge included
        return None
    return f"{addr}:{port}" if addr and port else None


def now_text() -> str:
    return datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")


def _read(fd_or_path) -> dict | None:
    """The holder's record; None when there is none or it is not (yet) a whole JSON object."""
    try:
        if isinstance(fd_or_path, int):
            text = os.pread(fd_or_path, 4096, 0).decode("utf-8", "replace")
        else:
            text = Path(fd_or_path).read_text(encoding="utf-8", errors="replace")
        record = json.loads(text)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _flock(fd: int, kind: int) -> bool | None:
    """Try the flock ``kind`` without waiting: True when taken, False when another process holds it, None when the
    file system has no flock (then the record's pid decides)."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file ``fd`` is open on (a holder that released it unlinked it)."""
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except OSError:
        return False


def holder(folder) -> dict | None:
    """The live holder of ``folder``'s lock, {"pid", "host", "since", ...}, or None when no process trains there
    (no lock, or its holder died). A lock written on another host counts as live: nothing here can check it."""
    path = Path(folder) / LOCK_FILE
    record = _read(path)
    if record is None:
        return None
    if record.get("host") != platform.node():
        return record
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        got = _flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)  # closing drops the shared flock taken to look
    if got is None:
        return record if _pid_alive(record.get("pid")) else None
    return None if got else record


def busy_message(folder, record: dict | None, doing: str) -> str:
    """The one line a refusal prints: who holds ``folder`` and what to do."""
    folder = Path(folder)
    if not record:
        return (f"cannot {doing} {folder}: another process holds its lock (it has not written its name yet); wait "
                "for it to finish or stop it")
    pid, host, since = record.get("pid"), record.get("host"), record.get("since")
    who = f"unitune pid {pid} on host {host} has been training in it since {since}"
    if host == platform.node():
        return (f"cannot {doing} {folder}: {who}; wait for it to finish, or stop it with `kill {pid}` (once "
                "training has begun it saves a checkpoint first) and try again")
    return (f"cannot {doing} {folder}: {who}; wait for it to finish or stop it there; if that process is gone, "
            f"delete {folder / LOCK_FILE}")


def check_free(folder, doing: str) -> None:
    """Refuse (one line) when a process trains in ``folder``; the lock of this process's own launch is fine."""
    found = holder(folder)
    if found is not None and (found.get("launch") is None or found.get("launch") != launch_id()):
        raise UserError(busy_message(folder, found, doing))


class RunLock:
    """The lock this process holds on a run folder: ``take`` it, follow the folder when it is moved, ``release``."""

    def __init__(self):
        self.fd: int | None = None
        self.path: Path | None = None

    def take(self, folder: Path, doing: str = "train into") -> None:
        """Lock ``folder`` for this process, or raise the one-line UserError naming its holder. The lock of a dead
        process on this host is taken over, with a line. A lock already held (of a run just moved aside) is
        released once this one is held."""
        path = Path(folder) / LOCK_FILE
        if self.fd is not None and self.path == path:
            return
        for _ in range(100):  # each pass loses only to a holder that released and unlinked the file meanwhile
            fd, created = self._open(path)
            if fd is None:
                continue
            try:
                got = _flock(fd, fcntl.LOCK_EX)
                for _ in range(BUSY_RETRIES if got is False else 0):
                    time.sleep(0.05)
                    got = _flock(fd, fcntl.LOCK_EX)
                    if got is not False:
                        break
                if got is False:
                    raise UserError(busy_message(folder, _read(fd), doing))
                if not _same_file(fd, path):
                    os.close(fd)
                    continue
                if not created:
                    self._take_over(fd, folder, got, doing)
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "since": now_text(),
                                              "started": time.time(), "launch": launch_id()}).encode(), 0)
                    os.fsync(fd)
                except OSError as err:  # a full disk or quota: one line, as the folder's other writes say it
                    raise UserError(f"cannot write to --output_dir {folder} ({err.strerror}); free some space or "
                                    "choose another folder") from None
            except BaseException:
                os.close(fd)
                raise
            self.release()
            self.fd, self.path = fd, path
            return
        raise UserError(f"cannot lock {folder}: other processes keep taking and releasing its lock; try again")

    @staticmethod
    def _open(path: Path) -> tuple[int | None, bool]:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), True
        except FileExistsError:
            pass
        except OSError as err:
            raise UserError(f"cannot write to --output_dir {path.parent} ({err.strerror}); choose a writable "
                            "folder") from None
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC), False
        except FileNotFoundError:  # released between the two opens
            return None, False
        except OSError as err:
            raise UserError(f"cannot write to --output_dir {path.parent} ({err.strerror}); choose a writable "
                            "folder") from None

    @staticmethod
    def _take_over(fd: int, folder: Path, got: bool | None, doing: str) -> None:
        """A lock file this process could lock: its writer died, unless it is on another host (unknowable from
        here) or, where the file system has no flock, its pid still runs."""
        record = _read(fd)
        if record is None:
            return  # its writer died before it wrote its name
        alive_elsewhere = record.get("host") != platform.node()
        if alive_elsewhere or (got is None and record.get("pid") != os.getpid() and _pid_alive(record.get("pid"))):
            raise UserError(busy_message(folder, record, doing))
        print(f"unitune: taking over the lock of {folder}: pid {record.get('pid')} (since {record.get('since')}) is "
              "no longer running", flush=True)

    def moved(self, folder: Path) -> None:
        """The locked folder now lives at ``folder`` (moved aside with the lock held)."""
        if self.path is not None:
            self.path = Path(folder) / LOCK_FILE

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()  # before the close: a new holder never finds this file unlocked
        except OSError:
            pass
        os.close(self.fd)  # the kernel drops the flock with its last descriptor
        self.fd = self.path = None


@contextlib.contextmanager
def held_while_training():
    """A RunLock (empty until prepare_output_dir takes it), released at the end, on an error, on Ctrl-C and on a
    SIGTERM that arrives outside the training steps (during them, lifecycle.GracefulStop saves a checkpoint first):
    the default SIGTERM would end the process without releasing anything."""
    lock = RunLock()
    restore = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def stop(signum, frame):
            raise Interrupted("SIGTERM: stopped outside the training steps (no checkpoint saved by this stop)", 143)

        restore = signal.signal(signal.SIGTERM, stop)
    try:
        yield lock
    finally:
        lock.release()
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
