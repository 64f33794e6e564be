"""Checkpoint files of a run: plain dicts of tensors, numbers, strings, lists and dicts.

Saved with ``torch.save`` through the atomic write and loaded with ``weights_only=True``: loading
one can never execute code.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import CheckpointError
from .files import BEST, LAST, PREVIOUS, atomic_write_bytes

FORMAT = "bnnrepro.checkpoint"
VERSION = 1


def save(path: Path, state: dict) -> None:
    import torch

    state = {"format": FORMAT, "version": VERSION, **state}
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def save_last(run_dir: Path, state: dict) -> None:
    """Write ``last.pt``, keeping the one it replaces as ``previous.pt`` (a fallback on resume)."""
    last = Path(run_dir) / LAST
    if last.is_file():
        os.replace(last, Path(run_dir) / PREVIOUS)
    save(last, state)


def load(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); a truncated or foreign file raises CheckpointError."""
    import torch

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
