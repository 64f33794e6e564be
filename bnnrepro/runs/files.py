"""The files of a run directory, and the one atomic write of the package.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON line per
finished epoch), ``summary.json`` (written last), ``last.pt`` / ``previous.pt`` / ``best.pt``
(checkpoints) and ``curves.png``. A multirun's sweep folder lists its runs in ``runs.txt``.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..errors import StorageError

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"
CURVES = "curves.png"
RUNS_LIST = "runs.txt"
# the files that make a directory a run (any one of them)
MARKERS = (CONFIG, SUMMARY, METRICS, LAST, BEST)

_UMASK = os.umask(0)
os.umask(_UMASK)


def commit_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make a finished temp file (beside ``path``) durable, then rename it over ``path``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS}
# what torch.save raises when the file object under it fails: its C++ writer swallows the OSError
_TORCH_WRITE_FAILED = ("file write failed", "inline_container", "PytorchStreamWriter failed")


def storage_error(err: BaseException, path: Path) -> StorageError | None:
    """The one clear error for a failed write of ``path`` (disk or quota full, I/O error, read-only
    file system), from the OS's ``OSError`` or torch's ``RuntimeError``; None for other errors."""
    if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
        why = err.strerror or str(err)
    elif isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILED):
        why = "the write failed"
    else:
        return None
    try:
        st = os.statvfs(path.parent)
        free = f"; {st.f_bavail * st.f_frsize / 2**20:.1f} MiB free there"
    except OSError:
        free = ""
    clear = StorageError(f"could not write {path}: {why}{free}. The previous {path.name} (if any) is kept; "
                         "free some space and run the command again")
    clear.reason = f"{path.name}: {why}{free}"
    return clear


def atomic_write_bytes(path: str | os.PathLike, write: Callable) -> Path:
    """``write(fileobj)`` into a temp file beside ``path``; flush, fsync, then rename over ``path``.
    A crash at any point leaves either the old file or the new one, never a torn one; a full disk
    raises :class:`StorageError` and leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise (storage_error(err, path) or err) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; files get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
        commit_file(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        clear = storage_error(err, path)
        if clear is not None:
            raise clear from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """One short ``O_APPEND`` write: concurrent writers (parallel multirun jobs) never interleave."""
    try:
        with open(path, "a") as f:
            f.write(line.rstrip("\n") + "\n")
    except OSError as err:
        raise (storage_error(err, Path(path)) or err) from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a ``.jsonl`` file; a line torn by a crash (or blank) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
