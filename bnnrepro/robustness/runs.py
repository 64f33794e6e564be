"""Find the trained runs a sweep evaluates: run directories, checkpoints, sweeps (runs.txt) or any
folder holding run directories."""
from __future__ import annotations

from pathlib import Path

from ..train.checkpoint import BEST, LAST, CheckpointError, resolve

RUN_MARKERS = ("config.yaml", "summary.json", BEST, LAST)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in RUN_MARKERS)


def _checked(path: Path, which: str) -> Path:
    """The run directory (or checkpoint file) itself, after checking that it has a checkpoint."""
    resolve(path, which)  # raises CheckpointError naming the run without best.pt / last.pt
    return path


def _from_list(listing: Path, which: str) -> list[Path]:
    lines = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not lines:
        raise CheckpointError(f"{listing} lists no runs")
    out = []
    for line in lines:
        run = Path(line)
        if not run.is_absolute():
            run = (listing.parent / run).resolve()
        if not run.exists():
            raise CheckpointError(f"{listing} lists {run}, which does not exist")
        out.append(_checked(run, which))
    return out


def discover(paths: list[str | Path], which: str = "best") -> list[Path]:
    """Each path: a run directory, a checkpoint file, a ``runs.txt``, a sweep directory holding
    ``runs.txt``, or a directory whose sub-directories are runs. Every run must have a checkpoint."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{raw}: no such file or directory")
        if path.is_file():
            found += _from_list(path, which) if path.name == "runs.txt" else [_checked(path, which)]
        elif is_run_dir(path):
            found.append(_checked(path, which))
        elif (path / "runs.txt").is_file():
            found += _from_list(path / "runs.txt", which)
        else:
            children = sorted(p for p in path.iterdir() if is_run_dir(p))
            if not children:
                raise CheckpointError(f"{raw}: not a run directory, and it holds no runs.txt and no "
                                      f"run directories (folders with config.yaml and best.pt/last.pt)")
            found += [_checked(child, which) for child in children]
    unique, seen = [], set()
    for run in found:
        key = run.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(run)
    return unique
