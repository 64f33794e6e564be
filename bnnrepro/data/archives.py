"""Archive files: where they live, md5 checks (cached per user), download, and the errors.

Nothing here ever writes into a data root except a download into a root that is writable by
intent (see :func:`writable`); the md5 verification cache lives in the per-user cache dir.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, Union

from ..errors import CorruptFileError, DataError, MissingFilesError
from ..runs.files import atomic_write_json, commit_file

log = logging.getLogger(__name__)

Download = Union[bool, str]  # True | False | "auto" (strings "true"/"false" from configs too)
PROBE_TIMEOUT_S = 2.5        # one HEAD request decides whether the official server is reachable
FETCH_TIMEOUT_S = 30.0       # per socket operation while downloading


@dataclass(frozen=True)
class FileSpec:
    """One official file, at the path torchvision's ``root`` layout gives it."""

    relpath: str                      # relative to the data root; downloads go here
    md5: str                          # the official md5
    urls: tuple[str, ...] = ()        # official download locations, tried in order
    also_md5: tuple[str, ...] = ()    # other byte-exact variants accepted at relpath
    # Other places that hold the same content: (path relative to root, or absolute; accepted md5s).
    alternatives: tuple[tuple[str, tuple[str, ...]], ...] = ()
    note: str = ""                    # shown in the missing-file message

    @property
    def name(self) -> str:
        return Path(self.relpath).name

    def candidates(self, root: Path) -> list[tuple[Path, tuple[str, ...]]]:
        first = (root / self.relpath, (self.md5, *self.also_md5))
        return [first] + [(root / p, md5s) for p, md5s in self.alternatives]


@dataclass
class Found:
    path: Path
    md5: str
    spec: FileSpec = field(repr=False)

    def record(self) -> dict:
        return {"path": str(self.path), "md5": self.md5, "bytes": self.path.stat().st_size}


# ---------------------------------------------------------------------------------------------
# Locations


def cache_dir() -> Path:
    """Per-user cache: $XDG_CACHE_HOME/bnnrepro, else ~/.cache/bnnrepro."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bnnrepro"


def resolve_root_with_source(root: str | os.PathLike | None) -> tuple[Path, str]:
    if root is not None and str(root) != "":
        return Path(root).expanduser().absolute(), "argument root"
    env = os.environ.get("BNNREPRO_DATA")
    if env:
        return Path(env).expanduser().absolute(), "environment variable BNNREPRO_DATA"
    return cache_dir() / "data", "default per-user cache (set data.root or BNNREPRO_DATA to change)"


def resolve_root(root: str | os.PathLike | None) -> Path:
    """Explicit root > env BNNREPRO_DATA > per-user cache (XDG_CACHE_HOME or ~/.cache)/bnnrepro/data."""
    return resolve_root_with_source(root)[0]


def writable(path: Path) -> bool:
    """Whether ``path`` (or its nearest existing parent) may be written to *by intent*.

    The mode bits count, not only ``os.access``: root passes every access check, and CI runs as
    root on a ``r-x`` shared data folder that must stay untouched.
    """
    p = Path(path)
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    try:
        return os.access(p, os.W_OK) and bool(p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


def download_mode(download: Download) -> bool | str:
    """Normalise ``download`` to True, False or "auto"; configs pass strings."""
    if isinstance(download, bool):
        return download
    text = str(download).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"download={download!r} is not allowed; allowed: auto, true, false")


# ---------------------------------------------------------------------------------------------
# md5, with a per-user cache keyed by path + size + mtime so a second load does not re-hash


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _md5_cache_file() -> Path:
    return cache_dir() / "md5-cache.json"


def _read_md5_cache() -> dict:
    try:
        with open(_md5_cache_file()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_md5_cache(data: dict) -> None:
    target = _md5_cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target, data, indent=0)  # concurrent runs may drop an entry, never corrupt the file
    except OSError as err:  # a read-only home only costs a re-hash next time
        log.debug("md5 cache not written: %s", err)


def _stat_key(st: os.stat_result) -> list[int]:
    """What identifies one version of a file's content without reading it. ``ctime`` is the part a
    user cannot set: editing a file and restoring its size and mtime (``touch -d``) still moves it."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_md5(path: Path) -> str:
    """md5 of ``path``, reusing a cached value only while device, inode, size, mtime and ctime are
    all unchanged (a rewritten, replaced or touched file is hashed again)."""
    st = path.stat()
    key = str(path.resolve())
    cache = _read_md5_cache()
    hit = cache.get(key)
    if isinstance(hit, list) and len(hit) == 6 and hit[:5] == _stat_key(st):
        return str(hit[5])
    digest = md5sum(path)
    if _stat_key(path.stat()) != _stat_key(st):
        return digest  # changed while it was read: the digest describes no stable version
    cache = _read_md5_cache()  # re-read: another process may have added entries meanwhile
    cache[key] = [*_stat_key(st), digest]
    _write_md5_cache(cache)
    return digest


# ---------------------------------------------------------------------------------------------
# Network (module-level functions so tests can monkeypatch them)


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the server behind ``url`` answers within ``timeout`` s, else the reason.

    Runs in a thread so that a hanging DNS lookup cannot stretch the wait either.
    """
    result: list[str | None] = ["timed out after %.1f s" % timeout]

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            result[0] = None
        except urllib.error.HTTPError:
            result[0] = None  # the server answered; the GET decides
        except Exception as err:  # noqa: BLE001 - any failure means "not reachable"
            result[0] = f"{type(err).__name__}: {err}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.2)
    return result[0]


def fetch(url: str, dest: Path, timeout: float = FETCH_TIMEOUT_S) -> None:
    """Stream ``url`` into ``dest`` (which the caller deletes on failure)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        done, next_report = 0, 0.1
        while block := resp.read(1 << 20):
            out.write(block)
            done += len(block)
            if total and done / total >= next_report:
                log.info("downloading %s: %d%% of %.1f MB", url, 100 * done // total, total / 1e6)
                next_report += 0.1


def _download(spec: FileSpec, root: Path) -> Found:
    dest = root / spec.relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in spec.urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            log.info("downloading %s -> %s", url, dest)
            fetch(url, tmp)
            actual = md5sum(tmp)
            if actual not in (spec.md5, *spec.also_md5):
                errors.append(f"{url}: md5 {actual}, expected {spec.md5}")
                continue
            commit_file(tmp, dest)
            return Found(dest, actual, spec)
        except Exception as err:  # noqa: BLE001 - try the next mirror, report all at the end
            errors.append(f"{url}: {type(err).__name__}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {spec.name} to {dest}:\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------------------------------------
# Locate + verify + (maybe) download a set of files


def _missing_message(dataset: str, root: Path, root_source: str, missing: Sequence[FileSpec],
                     reason: str, hint: str) -> str:
    lines = [f"{dataset}: {len(missing)} required file(s) not found under the data root {root}",
             f"  (root from: {root_source}; {reason})"]
    for spec in missing:
        lines.append(f"  - {spec.name}  md5 {spec.md5}")
        lines.append(f"      put it at:   {root / spec.relpath}")
        if spec.urls:
            lines.append(f"      get it from: {' or '.join(spec.urls)}")
        for alt, _ in spec.alternatives:
            lines.append(f"      also accepted: {root / alt}")
        if spec.note:
            lines.append(f"      note: {spec.note}")
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def verify(found: Iterable[tuple[Path, tuple[str, ...], FileSpec]]) -> list[Found]:
    """md5-check every present file; one error naming every bad file."""
    good, bad = [], []
    for path, md5s, spec in found:
        actual = file_md5(path)
        if actual in md5s:
            good.append(Found(path, actual, spec))
        else:
            bad.append((path, md5s, actual, spec))
    if bad:
        lines = [f"{len(bad)} file(s) do not have the official md5 (damaged, truncated or another version):"]
        for path, md5s, actual, spec in bad:
            lines.append(f"  - {path}: md5 {actual}, expected {' or '.join(md5s)}")
            source = f" from {' or '.join(spec.urls)}" if spec.urls else ""
            lines.append(f"      fix: delete it and fetch it again{source} (or run with download enabled "
                         f"and a writable root)")
        raise CorruptFileError("\n".join(lines))
    return good


def ensure(dataset: str, root: Path, specs: Sequence[FileSpec], download: Download, *,
           root_source: str = "", hint: str = "") -> dict[str, Found]:
    """Find every spec (first existing candidate wins), download what is missing when allowed,
    md5-check all of it. Missing files are reported before any hashing, so that fails fast."""
    mode = download_mode(download)
    present, missing = [], []
    for spec in specs:
        for path, md5s in spec.candidates(root):
            if path.is_file():
                present.append((path, md5s, spec))
                break
        else:
            missing.append(spec)

    if missing:
        reason = _why_not_download(mode, root, missing)
        if reason:
            raise MissingFilesError(_missing_message(dataset, root, root_source, missing, reason, hint))
    found = verify(present)  # before downloading: a damaged local file fails without network traffic
    found += [_download(spec, root) for spec in missing]
    return {f.spec.relpath: f for f in found}


def _why_not_download(mode: bool | str, root: Path, missing: Sequence[FileSpec]) -> str:
    """'' when downloading should be tried, else why not (for the message)."""
    if mode is False:
        return "download=False, so nothing was fetched"
    if not all(spec.urls for spec in missing):
        return "these files have no public download URL"
    if not writable(root):
        return f"download={mode} but the root is not writable, so nothing was fetched"
    problem = reachable(missing[0].urls[0])
    if problem:
        return f"download={mode} but {missing[0].urls[0]} is not reachable ({problem})"
    return ""

