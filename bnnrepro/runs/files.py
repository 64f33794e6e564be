"""The files of a run directory, and the one atomic write of the package.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON line per
finished epoch), ``summary.json`` (written last), ``last.pt`` / ``previous.pt`` / ``best.pt``
(checkpoints) and ``curves.png``. A multirun's sweep folder lists its runs in ``runs.txt``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

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


def atomic_write_bytes(path: str | os.PathLike, write: Callable) -> Path:
    """``write(fileobj)`` into a temp file beside ``path``; flush, fsync, then rename over ``path``.
    A crash at any point leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; files get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
        commit_file(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """One short ``O_APPEND`` write: concurrent writers (parallel multirun jobs) never interleave."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")


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
