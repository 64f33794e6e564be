"""Find run directories and read their ``summary.json`` / ``config.yaml``.

A directory is a run when it holds any of ``config.yaml``, ``summary.json``, ``metrics.jsonl`` or
``last.pt``. It is *completed* when ``summary.json`` is valid JSON with status ``completed`` and
every field a table needs, and its ``config.yaml`` is readable and agrees with it on seed and
scale; *interrupted* (resumable) when it has a readable ``config.yaml`` and no ``summary.json``.
Anything else is a :class:`Problem`: reported, never counted, never fatal.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

MARKERS = ("config.yaml", "summary.json", "metrics.jsonl", "last.pt")
SKIP_DIRS = ("multirun",)  # sweep folders hold runs.txt only
MAX_DEPTH = 4
# summary.json fields a table row needs, with the types they must have
REQUIRED = {"test_error": (int, float), "seed": int, "scale": str, "epochs_done": int,
            "wall_time_s": (int, float), "code_version": dict}


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict | None = None   # None: interrupted
    mtime: float = 0.0            # of summary.json (completed) or config.yaml (interrupted)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def seed(self) -> int:
        return int(self.summary["seed"]) if self.summary else int(self.config.get("seed", 0))

    @property
    def scale(self) -> str:
        if self.summary:
            return str(self.summary["scale"])
        return str((self.config.get("scale") or {}).get("name"))


@dataclass(frozen=True)
class Problem:
    path: Path
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


@dataclass
class Scan:
    root: Path
    completed: list[Run] = field(default_factory=list)
    interrupted: list[Run] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _run_dirs(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if any(m in filenames for m in MARKERS):
            dirnames[:] = []  # a run directory holds no runs
            yield here
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS
                             and depth < MAX_DEPTH)


def _read_config(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, "no config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return None, f"config.yaml is unreadable ({type(err).__name__})"
    if not isinstance(cfg, dict):
        return None, "config.yaml is not a mapping"
    return cfg, None


def _check_summary(summary: Any) -> str | None:
    if not isinstance(summary, dict):
        return "summary.json is not a JSON object"
    if summary.get("status") != "completed":
        return f"status is {summary.get('status')!r}, not 'completed'"
    missing = [k for k in REQUIRED if k not in summary]
    if missing:
        return f"summary.json lacks {', '.join(missing)}"
    wrong = [k for k, t in REQUIRED.items() if isinstance(summary[k], bool) or not isinstance(summary[k], t)]
    if wrong:
        return f"summary.json has wrongly typed {', '.join(f'{k}={summary[k]!r}' for k in wrong)}"
    if not math.isfinite(summary["test_error"]):
        return f"test_error is {summary['test_error']}"
    return None


def read_run(path: Path) -> Run | Problem:
    """One run directory: a completed or interrupted :class:`Run`, or the :class:`Problem` with it."""
    cfg, cfg_problem = _read_config(path / "config.yaml")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        if cfg is None:
            return Problem(path, f"interrupted run without a usable config ({cfg_problem})")
        return Run(path, cfg, None, (path / "config.yaml").stat().st_mtime)
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return Problem(path, f"summary.json is not valid JSON ({type(err).__name__}: {err})")
    why = _check_summary(summary)
    if why is None and cfg is None:
        why = f"completed, but {cfg_problem}: its row cannot be identified"
    if why is None:
        cfg_seed, cfg_scale = cfg.get("seed"), (cfg.get("scale") or {}).get("name")
        if cfg_seed != summary["seed"] or cfg_scale != summary["scale"]:
            why = (f"summary.json (seed {summary['seed']}, scale {summary['scale']}) disagrees with "
                   f"config.yaml (seed {cfg_seed}, scale {cfg_scale})")
    if why is not None:
        return Problem(path, why)
    return Run(path, cfg, summary, summary_path.stat().st_mtime)


def scan(root: str | os.PathLike) -> Scan:
    """Every run under ``root`` (recursively, skipping ``multirun/`` sweep folders)."""
    root = Path(root)
    result = Scan(root)
    if not root.is_dir():
        return result
    for path in _run_dirs(root):
        item = read_run(path)
        if isinstance(item, Problem):
            result.problems.append(item)
        elif item.summary is None:
            result.interrupted.append(item)
        else:
            result.completed.append(item)
    return result


def to_frame(runs: list[Run]) -> pd.DataFrame:
    """One line per completed run: what the tables aggregate."""
    rows = []
    for r in runs:
        s, code = r.summary, r.summary["code_version"]
        q = s.get("quantizer") or {}
        rows.append({
            "run_id": r.id, "path": str(r.path), "seed": s["seed"], "scale": s["scale"],
            "test_error": float(s["test_error"]), "best_val_error": s.get("best_val_error"),
            "best_epoch": s.get("best_epoch"), "final_test_error": s.get("final_test_error"),
            "test_perplexity": s.get("test_perplexity"),
            "epochs_done": s["epochs_done"], "epochs": s.get("epochs"), "wall_time_s": float(s["wall_time_s"]),
            "code_version": code_label(code), "experiment": s.get("experiment"), "paper": s.get("paper"),
            "dataset": s.get("dataset"), "model": s.get("model"), "w_bits": q.get("w_bits"),
            "a_bits": q.get("a_bits"), "g_bits": q.get("g_bits"),
        })
    return pd.DataFrame(rows)


def code_label(code: dict) -> str:
    """``0.1.0@3af84dc`` (``+dirty`` when the tree had uncommitted changes; ``@?`` without git)."""
    commit = code.get("git_commit")
    label = f"{code.get('package', '?')}@{commit[:7] if commit else '?'}"
    return label + ("+dirty" if code.get("git_dirty") else "")
