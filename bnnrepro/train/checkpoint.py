"""Checkpoints and atomic files.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts saved with ``torch.save``
and loaded with ``weights_only=True``: loading one can never execute code.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

FORMAT = "bnnrepro.checkpoint"
VERSION = 1
LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, write) -> None:
    """Write via ``write(fileobj)`` into a temp file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; run files get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save(path: Path, state: dict) -> None:
    state = {"format": FORMAT, "version": VERSION, **state}
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def save_last(run_dir: Path, state: dict) -> None:
    """Write ``last.pt``, keeping the one it replaces as ``previous.pt`` (a fallback on resume)."""
    last = Path(run_dir) / LAST
    if last.is_file():
        os.replace(last, Path(run_dir) / PREVIOUS)
    save(last, state)


def load_resumable(run_dir: Path) -> dict | None:
    """The newest loadable of ``last.pt`` and ``previous.pt``; None when neither exists.
    A damaged ``last.pt`` is reported and skipped, never silently used."""
    errors = []
    for name in (LAST, PREVIOUS):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        try:
            return load(path)
        except CheckpointError as err:
            errors.append(str(err))
            print(f"warning: {err}; falling back to the previous checkpoint", file=sys.stderr)
    if errors:
        raise CheckpointError(f"no loadable checkpoint in {run_dir}: " + "; ".join(errors))
    return None


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); a truncated or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle with code, ...
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bnnrepro checkpoint (no format={FORMAT!r} field)")
    return state


def resolve(path_or_run: str | Path, which: str = "best") -> Path:
    """A run directory maps to its best (or last) checkpoint; a file is taken as it is."""
    p = Path(path_or_run)
    if p.is_dir():
        for name in ((BEST, LAST) if which == "best" else (LAST, BEST)):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"run directory {p} has no checkpoint ({BEST} or {LAST})")
    if not p.exists():
        raise CheckpointError(f"{p} is neither a run directory nor a checkpoint file")
    return p


def load_model(path_or_run: str | Path, which: str = "best", map_location="cpu"):
    """Rebuild the trained model from a checkpoint's config; returns ``(model, cfg)`` in eval mode."""
    from omegaconf import OmegaConf

    from .factory import build_model

    state = load(resolve(path_or_run, which), map_location=map_location)
    cfg = OmegaConf.create(state["config"])
    model = build_model(cfg, tuple(state["input_shape"]), state["num_classes"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg
