"""Run records: the :class:`Run` type, reading one, finding many (folders, sweeps, ``runs.txt``),
and exporting a run's record (config, metrics, summary: never checkpoints) without machine paths.

A directory is a run when it holds any of :data:`~.files.MARKERS`. It is *completed* when
``summary.json`` is valid JSON with status ``completed`` and every field a table needs, and its
``config.yaml`` is readable and agrees with it on seed and scale; *interrupted* (resumable) when it
has a readable ``config.yaml`` and no ``summary.json``. Anything else is a :class:`Problem`:
reported, never counted, never fatal.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import RunError
from .checkpoints import resolve
from .files import (CONFIG, MARKERS, METRICS, RUNS_LIST, SUMMARY, atomic_write_json,
                    atomic_write_text, append_line, read_jsonl)
from .provenance import code_label

SKIP_DIRS = ("multirun", "reports")  # sweep folders hold runs.txt only; reports hold outputs
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

    @property
    def status(self) -> str:
        """``completed``, ``interrupted`` (resumable), or the summary's own status (``diverged``, ...)."""
        return "interrupted" if self.summary is None else str(self.summary.get("status"))

    @property
    def code(self) -> str:
        """``0.1.0@3af84dc`` (+dirty): the code version that made the run."""
        return code_label((self.summary or {}).get("code_version") or {})

    @property
    def dirty(self) -> bool:
        """Made on a modified tree: dirty where it ended or where it started, or started on
        another commit than it ended on (runs from before ``code_version_start`` have the end only)."""
        summary = self.summary or {}
        end, start = summary.get("code_version") or {}, summary.get("code_version_start") or {}
        return bool(end.get("git_dirty") or start.get("git_dirty")
                    or (start and start.get("git_commit") != end.get("git_commit")))

    def metric_rows(self) -> list[dict]:
        """The epoch lines of ``metrics.jsonl`` (a torn last line dropped)."""
        return [r for r in read_jsonl(self.path / METRICS) if "epoch" in r]

    def metrics(self):
        """``metrics.jsonl`` as a pandas DataFrame, one row per epoch."""
        import pandas as pd

        return pd.DataFrame(self.metric_rows())

    def checkpoint(self, which: str = "best") -> Path:
        """The path of the best (or last) checkpoint; CheckpointError when there is none."""
        return resolve(self.path, which)


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

    def extend(self, other: "Scan") -> None:
        """Add another root's runs; a run id already here (the same run's exported record) is skipped."""
        known = {r.id for r in self.completed + self.interrupted}
        self.completed += [r for r in other.completed if r.id not in known]
        self.interrupted += [r for r in other.interrupted if r.id not in known]
        self.problems += other.problems


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in MARKERS)


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


MAX_CONFIG_BYTES = 1 << 20  # a resolved config is a few kB; a bigger file is not one we wrote


def load_config_text(text: str) -> tuple[dict | None, str | None]:
    """Parse the text of a ``config.yaml`` as we write it: plain YAML (no anchors or aliases, so no
    alias bomb), a mapping, and no ``${...}`` interpolation left (ours is written resolved)."""
    if len(text) > MAX_CONFIG_BYTES:
        return None, f"{CONFIG} is {len(text)} bytes, over the {MAX_CONFIG_BYTES} a config can be"
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                return None, f"{CONFIG} uses a YAML anchor or alias (line {token.start_mark.line + 1}); ours never do"
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return None, f"{CONFIG} is not valid YAML ({type(err).__name__})"
    except RecursionError:
        return None, f"{CONFIG} is nested too deeply to be a config"
    if not isinstance(cfg, dict):
        return None, f"{CONFIG} is not a mapping"
    try:
        where = _interpolation(cfg)
    except RecursionError:
        return None, f"{CONFIG} is nested too deeply to be a config"
    if where:
        return None, f"{CONFIG} holds an interpolation at {where}; ours are written resolved"
    return cfg, None


def _interpolation(node: Any, at: str = "") -> str | None:
    """The dotted key of the first string holding ``${``, else None."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return at or "(top)" if isinstance(node, str) and "${" in node else None
    for key, value in items:
        found = _interpolation(value, f"{at}.{key}" if at else str(key))
        if found:
            return found
    return None


def read_config(path: Path) -> tuple[dict | None, str | None]:
    """A run's ``config.yaml`` as a dict (see :func:`load_config_text`), or None and why not."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG
    if not path.is_file():
        return None, f"no {CONFIG}"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            return None, f"{CONFIG} is {path.stat().st_size} bytes, over the {MAX_CONFIG_BYTES} a config can be"
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{CONFIG} is unreadable ({type(err).__name__})"
    return load_config_text(text)


def read_summary(run_dir: Path) -> dict | None:
    """``summary.json`` of a run as a dict; None when it is missing or not a JSON object."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _check_summary(summary: Any) -> str | None:
    if not isinstance(summary, dict):
        return f"{SUMMARY} is not a JSON object"
    if summary.get("status") != "completed":
        return f"status is {summary.get('status')!r}, not 'completed'"
    missing = [k for k in REQUIRED if k not in summary]
    if missing:
        return f"{SUMMARY} lacks {', '.join(missing)}"
    wrong = [k for k, t in REQUIRED.items() if isinstance(summary[k], bool) or not isinstance(summary[k], t)]
    if wrong:
        return f"{SUMMARY} has wrongly typed {', '.join(f'{k}={summary[k]!r}' for k in wrong)}"
    if not math.isfinite(summary["test_error"]):
        return f"test_error is {summary['test_error']}"
    return None


def read_run(path: Path) -> Run | Problem:
    """One run directory: a completed or interrupted :class:`Run`, or the :class:`Problem` with it."""
    path = Path(path)
    cfg, cfg_problem = read_config(path / CONFIG)
    summary_path = path / SUMMARY
    if not summary_path.is_file():
        if cfg is None:
            return Problem(path, f"interrupted run without a usable config ({cfg_problem})")
        return Run(path, cfg, None, (path / CONFIG).stat().st_mtime)
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return Problem(path, f"{SUMMARY} is not valid JSON ({type(err).__name__}: {err})")
    why = _check_summary(summary)
    if why is None and cfg is None:
        why = f"completed, but {cfg_problem}: its row cannot be identified"
    if why is None:
        cfg_seed, cfg_scale = cfg.get("seed"), (cfg.get("scale") or {}).get("name")
        if cfg_seed != summary["seed"] or cfg_scale != summary["scale"]:
            why = (f"{SUMMARY} (seed {summary['seed']}, scale {summary['scale']}) disagrees with "
                   f"{CONFIG} (seed {cfg_seed}, scale {cfg_scale})")
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


# ------------------------------------------------------------------------------------ runs.txt

def record_in_sweep(sweep_dir: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Append a run directory to ``<sweep dir>/runs.txt`` (parallel jobs never clobber each other)."""
    sweep = Path(sweep_dir)
    sweep.mkdir(parents=True, exist_ok=True)
    append_line(sweep / RUNS_LIST, str(Path(run_dir).resolve()))


def read_list(listing: Path) -> list[Path]:
    """The run directories a ``runs.txt`` names (relative lines are relative to its folder)."""
    lines = [line.strip() for line in Path(listing).read_text().splitlines() if line.strip()]
    if not lines:
        raise RunError(f"{listing} lists no runs")
    out = []
    for line in lines:
        run = Path(line)
        if not run.is_absolute():
            run = (Path(listing).parent / run).resolve()
        if not run.exists():
            raise RunError(f"{listing} lists {run}, which does not exist")
        out.append(run)
    return out


def discover(paths: list[str | os.PathLike], which: str | None = "best") -> list[Path]:
    """Each path: a run directory, a checkpoint file, a ``runs.txt``, a sweep directory holding
    ``runs.txt``, or a directory whose sub-directories are runs. With ``which``, every run must have
    that checkpoint (or the other one). Duplicates are dropped, order kept."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{raw}: no such run directory, checkpoint or runs.txt")
        if path.is_file():
            found += read_list(path) if path.name == RUNS_LIST else [path]
        elif is_run_dir(path):
            found.append(path)
        elif (path / RUNS_LIST).is_file():
            found += read_list(path / RUNS_LIST)
        else:
            children = sorted(p for p in path.iterdir() if is_run_dir(p))
            if not children:
                raise RunError(f"{raw}: not a run directory, and it holds no {RUNS_LIST} and no run "
                               f"directories (folders with {CONFIG} and a checkpoint)")
            found += children
    if which is not None:
        for run in found:
            resolve(run, which)  # CheckpointError naming the run without best.pt / last.pt
    unique, seen = [], set()
    for run in found:
        key = run.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(run)
    return unique


# ------------------------------------------------------------------------------------ export

def _relative(value: Any, roots: list[tuple[Path, str]]) -> Any:
    """Absolute paths below one of ``roots`` become ``<label>/<relative path>``; other absolute paths
    keep only their last component (``<elsewhere>/name``): a record names no path of the machine."""
    if isinstance(value, dict):
        return {k: _relative(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, roots) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        p = Path(value)
        for root, label in roots:  # longest first, "/" never a root (see _roots)
            if p == root or p.is_relative_to(root):
                rel = p.relative_to(root).as_posix()
                return label if rel == "." else f"{label}/{rel}"
        return f"<elsewhere>/{p.name}"
    if isinstance(value, str) and "/" in value:  # paths inside a string: a command line's `runs_dir=/...`
        for root, label in roots:
            value = value.replace(str(root), label)
    return value


def _roots(run: Run) -> list[tuple[Path, str]]:
    data_root = (run.config.get("data") or {}).get("root") or ((run.summary or {}).get("data") or {}).get("root")
    candidates = []
    if data_root and os.path.isabs(str(data_root)):
        candidates += [(Path(str(data_root)), "<data root>"), (Path(str(data_root)).resolve(), "<data root>")]
    runs_dir = run.config.get("runs_dir")
    if runs_dir and os.path.isabs(str(runs_dir)):
        candidates.append((Path(str(runs_dir)), "<runs root>"))
    candidates += [(run.path.absolute().parent, "<runs root>"), (run.path.resolve().parent, "<runs root>"),
                   (Path.home(), "~")]
    roots, seen = [], set()
    for root, label in sorted(candidates, key=lambda r: len(str(r[0])), reverse=True):
        if str(root) not in seen and root != Path(root.anchor):  # "/" would relabel every path
            seen.add(str(root))
            roots.append((root, label))
    return roots


def export(run: Run, dest_root: str | os.PathLike) -> Path:
    """Write ``<dest_root>/<run id>/`` with the run's config, metrics and summary, machine paths made
    relative to the data root / runs root. Exporting the same run again writes the same bytes."""
    dest = Path(dest_root) / run.id
    roots = _roots(run)
    if dest.resolve() == run.path.resolve():
        return dest  # already the record
    config = _relative(run.config, roots)
    atomic_write_text(dest / CONFIG, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    metrics = run.path / METRICS
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    atomic_write_text(dest / METRICS, "".join(line + "\n" for line in lines if line.strip()))
    if run.summary is not None:
        atomic_write_json(dest / SUMMARY, _relative(run.summary, roots))
    return dest

