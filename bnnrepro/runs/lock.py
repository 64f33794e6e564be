"""One writer per run directory: an OS file lock (``flock``) on ``<run>/.lock``, held while a
process trains the run.

The kernel drops the lock when its holder exits, however it exits (SIGKILL, a crash, a lost node),
so a lock is never stale in the kernel's sense; a ``.lock`` file still naming a holder while
nobody holds it is what a killed process leaves, and the next writer takes it over with a note.
The file names its holder (pid, host, start time, command) so that a refusal can say who.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import RunError, RunLocked

LOCK = ".lock"


# file systems that cannot lock (some NFS and Lustre mounts): the run goes on unlocked, with a warning
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
_TRIES = 20  # x 50 ms: a reader's brief shared lock (holder()) is never taken for a live writer


class RunLock:
    """A held lock; ``release()`` (or the ``with`` block's end) lets the next writer in."""

    def __init__(self, run_dir: Path, fd: int | None):
        self.run_dir, self._fd = run_dir, fd

    def release(self) -> None:
        if self._fd is None:  # released, or a file system without locks
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty file: nobody holds it (a named holder means killed)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode(errors="replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}
    return holder if isinstance(holder, dict) else {"unreadable": True}


def describe(holder: dict) -> str:
    if not holder or holder.get("unreadable"):
        return "another process (it did not say which)"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {when} "
            f"({holder.get('command', '?')})")


def _open(run_dir: Path) -> int:
    try:
        return os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunError(f"cannot open the lock file of run {run_dir} ({err.strerror}); a run is written "
                       "only where it can be locked: is the folder writable?") from None


def acquire(run_dir: str | os.PathLike, purpose: str = "train") -> RunLock:
    """Take the run's lock or raise :class:`RunLocked` naming the live holder. Waits at most about
    a second (for a reader's momentary check), never for a writer."""
    run_dir = Path(run_dir)
    fd = _open(run_dir)
    for attempt in range(_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt + 1 < _TRIES:  # perhaps a reader's momentary check (holder())
                time.sleep(0.05)
                continue
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(f"run {run_dir} is being written by {describe(holder)}; a second writer would "
                            f"duplicate its epochs. Wait for it to end (or stop it), then {purpose} "
                            "again") from None
        except OSError as err:
            os.close(fd)
            if err.errno in _NO_LOCKS:
                print(f"warning: the file system of {run_dir} cannot lock files ({err.strerror}); nothing "
                      "stops a second process from writing this run at the same time", file=sys.stderr)
                return RunLock(run_dir, None)
            raise RunError(f"cannot lock run {run_dir}: {err.strerror}") from None
    previous = _read_holder(fd)
    if previous and not previous.get("unreadable") and previous.get("pid") != os.getpid():
        print(f"note: {run_dir} was left locked by {describe(previous)}, which is no longer running "
              "(killed?); taking the lock over", file=sys.stderr)
    argv = getattr(sys, "orig_argv", None) or sys.argv
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(" ".join([Path(argv[0]).name, *argv[1:]]).split())[:500], "purpose": purpose}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, only its holder goes unnamed
        pass
    return RunLock(run_dir, fd)


def holder(run_dir: str | os.PathLike) -> dict | None:
    """Who holds the run's lock now (a dict, possibly empty), or None when nobody does."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
