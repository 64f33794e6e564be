"""Where a run came from: code version (commit, dirty flag), environment, and the command line."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from .. import __version__

# paths whose changes do not change what the code computes: generated results, docs
NOT_CODE = ("results", "README.md")


def code_version() -> dict:
    """Package version, git commit and whether the work tree's code had uncommitted changes
    (tracked files outside :data:`NOT_CODE`; untracked files are not counted)."""
    info = {"package": __version__, "git_commit": None, "git_dirty": None}
    src = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            excludes = [f":(exclude){p}" for p in NOT_CODE]
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes],
                                   cwd=src, capture_output=True, text=True, timeout=5)
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def code_label(code: dict) -> str:
    """``0.1.0@3af84dc`` (``+dirty`` when the tree had uncommitted changes; ``@?`` without git)."""
    commit = code.get("git_commit")
    label = f"{code.get('package', '?')}@{commit[:7] if commit else '?'}"
    return label + ("+dirty" if code.get("git_dirty") else "")


def environment() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node(),
            "threads": torch.get_num_threads(), "platform": platform.platform()}


def invocation(overrides: list[str] | None = None) -> dict:
    """The command line that made a run (program name only, no path) and its config overrides."""
    argv = list(sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return {"argv": argv, "overrides": list(overrides) if overrides is not None else None}
