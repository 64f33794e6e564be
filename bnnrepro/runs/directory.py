"""Making run directories: one per run, created exclusively so concurrent runs never share one."""
from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

from .files import MARKERS
from .lock import LOCK, holder

RUNS_ENV = "BNNREPRO_RUNS"


def runs_root(configured: str | os.PathLike | None = None) -> Path:
    """The configured runs root, else env ``BNNREPRO_RUNS``, else ``runs``."""
    return Path(configured or os.environ.get(RUNS_ENV) or "runs").expanduser()


def check_writable(root: Path) -> None:
    """Fail before any training when the runs root cannot take a run directory."""
    probe = root / f".write-test-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"x")
    except OSError as err:
        raise PermissionError(f"runs directory {root} is not writable ({err.strerror}); "
                              f"set runs_dir=... or env {RUNS_ENV} to a writable folder") from None
    finally:
        if root.is_dir():
            probe.unlink(missing_ok=True)


def default_name(cfg) -> str:
    label = cfg.experiment or cfg.paper or f"{cfg.model.name}-{cfg.data.name}"
    return f"{label}-{cfg.scale.name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def create(root: Path, name: str | None, label: str) -> Path:
    """Make a fresh run directory; a taken name gets a random suffix (``os.mkdir`` is atomic)."""
    base = name or label
    for attempt in range(100):
        path = root / (base if attempt == 0 and name else f"{base}-{secrets.token_hex(2)}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            if name and _never_started(path):
                print(f"note: reusing {path}: it was created but its run never started", file=sys.stderr)
                return path
            if name:
                raise FileExistsError(f"run directory {path} exists; resume it with resume={path} "
                                      "or choose another run_name") from None
    raise RuntimeError(f"could not create a unique run directory under {root}")


def _never_started(path: Path) -> bool:
    """A directory a killed run left between ``mkdir`` and its ``config.yaml``: nothing but perhaps
    its free lock file in it."""
    try:
        entries = {p.name for p in path.iterdir()}
    except OSError:
        return False
    return not (entries - {LOCK}) and not any(m in entries for m in MARKERS) and holder(path) is None
