"""Aggregate a table's runs: per row, the paper's number beside mean ± std over seeds (pandas).

Every reproduced number is computed here from ``summary.json`` values (``test_error``, at the
best-validation epoch, converted to the paper's metric); the paper's numbers come from the targets
file. Nothing else enters a table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import checks, curves
from ..runs import Problem, Scan
from .collect import to_frame
from .plan import RowPlan, waiting_for_source
from .targets import PAPER_NAMES, PaperNumber, Row, Table

RECORDS = "runs"  # <out>/runs/<run id>/: the committed record of each run a table counts
NO_PAPER = PaperNumber(None, "", "–")  # a row of an analogue table, not of the paper
DECIMALS = {"percent": 2, "fraction": 4, "none": 1}
UNIT_SUFFIX = {"percent": " (%)", "fraction": " (fraction)", "none": ""}


def metric_name(table: Table) -> str:
    name = {"test_error": "test error", "accuracy": "accuracy", "perplexity": "perplexity"}[table.metric]
    return name + UNIT_SUFFIX[table.unit]


def convert(table: Table, runs: pd.DataFrame, column: str = "test_error") -> pd.Series:
    """The runs' result in the paper's metric and unit (``test_error`` is a percent; ``column`` may
    be ``test_top5_error``, a percent too)."""
    if table.metric == "perplexity":
        return pd.to_numeric(runs["test_perplexity"], errors="coerce")
    err = pd.to_numeric(runs[column], errors="coerce").astype(float)
    value = err if table.metric == "test_error" else 100.0 - err
    return value / 100.0 if table.unit == "fraction" else value


def _fmt(x: float | None, decimals: int) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{decimals}f}"


def _mean_std(mean: float, std: float, n: int, decimals: int) -> str:
    """A row's reproduced cell: the mean, and ± the sample std when more than one seed counts."""
    return _fmt(mean, decimals) + (f" ± {_fmt(std, decimals)}" if n > 1 else "")


def duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class TableResult:
    table: Table
    scale: str
    seeds: tuple[int, ...]
    frame: pd.DataFrame                  # one line per paper row
    plans: list[RowPlan]
    problems: list[Problem]
    runs_dir: Path
    scale_description: str | None = None
    command: str = ""
    paper_title: str = ""
    verdicts: list = None                # checks.Verdict per check of the table


def _status(plan: RowPlan, n: int, paper: str, field: str) -> str:
    row = plan.row
    if row.not_reproduced:
        return f"not reproduced: {row.not_reproduced}"
    parts = []
    if len(plan.runs) > n:
        parts.append(f"{len(plan.runs) - n} run(s) have no {field} in summary.json: not counted")
    if n and n == len(plan.seeds):
        parts.append("ok")
    elif n:
        parts.append(f"{n} of {len(plan.seeds)} seeds")
    if plan.blocked and n < len(plan.seeds):
        parts.append(plan.blocked)
    elif waiting_for_source(plan):
        waiting = waiting_for_source(plan)
        parts.append(f"seed{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))} start from row "
                     f"{row.init_from_row}'s run of the same seed, not run yet (`bnnrepro table {paper}` runs "
                     "both, that one first)")
    elif plan.missing or plan.interrupted:
        pending = sorted(set(plan.missing) | set(plan.interrupted))
        how = (f"`bnnrepro table {paper} scale={plan.scale}` or `bnnrepro train {' '.join(row.overrides)} "
               f"scale={plan.scale} seed=<seed>` runs them" if row.scale else f"`bnnrepro table {paper}` runs them")
        parts.append(f"seed{'s' if len(pending) > 1 else ''} {', '.join(map(str, pending))} not run yet ({how})")
    dirty_used = sum(1 for r in plan.runs.values() if r.dirty)
    if plan.allow_dirty and dirty_used:
        parts.append(f"{dirty_used} run(s) counted from a modified tree (+dirty)")
    return "; ".join(parts)


def local_notes(plan: RowPlan, counted_elsewhere: set[str] = frozenset()) -> list[str]:
    """What the scan found beside the counted runs: resumable, differing, duplicate, dirty runs
    (printed by the command, never written: the tables are built from the records alone). A run
    another row counts (rows sharing a preset) is not "differing"."""
    parts = []
    for seed, run in sorted(plan.interrupted.items()):
        parts.append(f"seed {seed} interrupted, resumable: {run.id}")
    differing = [(run, diff) for run, diff in plan.differing if run.id not in counted_elsewhere]
    if differing:
        keys = sorted({k for _, diff in differing for k in diff})
        shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
        parts.append(f"{len(differing)} run(s) of this preset differ in {shown}: not counted")
    if plan.duplicates:
        parts.append(f"{len(plan.duplicates)} older duplicate run(s) of the same seed not counted")
    if plan.dirty:
        parts.append(f"{len(plan.dirty)} run(s) made on a modified tree (+dirty) not counted "
                     "(`--allow-dirty` counts them)")
    return parts


def figure_title(table: Table, row: Row) -> str:
    """The paper, its table and the row as the paper names them: "BNN, Table 1: BNN (Theano), MNIST"."""
    short = table.title.split(":")[0]  # "Table 1" of "Table 1: classification test error (...)"
    labels = ", ".join(str(row.labels[c]) for c in table.columns)
    return f"{PAPER_NAMES.get(table.paper, table.paper)}, {short}: {labels}"


def _row_figure(table: Table, plan: RowPlan, out_dir: Path) -> str:
    runs = [(f"seed {seed}", run.path) for seed, run in sorted(plan.runs.items())]
    if not runs or table.metric == "perplexity":  # the curves are error curves
        return ""
    paper = plan.row.paper.value if plan.row.paper else None
    paper_error = None
    if paper is not None and table.metric != "perplexity":
        pct = paper * 100.0 if table.unit == "fraction" else paper
        paper_error = pct if table.metric == "test_error" else 100.0 - pct
    rel_path = Path("figures") / table.name / f"{plan.row.id}.png"
    title = f"{figure_title(table, plan.row)} (scale={plan.scale}, seeds {', '.join(map(str, sorted(plan.runs)))})"
    try:
        done = curves.plot_row(runs, out_dir / rel_path, title, paper_error)
    except OSError:
        return ""
    return rel_path.as_posix() if done else ""


def values(table: Table, plan: RowPlan) -> list[float]:
    """The row's per-seed results in the table's metric (seeds in order)."""
    used = [plan.runs[s] for s in sorted(plan.runs)]
    return [float(v) for v in convert(table, to_frame(used)).dropna()] if used else []


def _line(table: Table, plan: RowPlan, out_dir: Path, figures: bool) -> dict:
    row, decimals = plan.row, DECIMALS[table.unit]
    used = [plan.runs[s] for s in sorted(plan.runs)]
    frame = to_frame(used)
    results = pd.Series(values(table, plan), dtype=float)
    n = int(results.size)
    mean = float(results.mean()) if n else math.nan
    std = float(results.std(ddof=1)) if n > 1 else math.nan
    number = row.paper or NO_PAPER
    delta = mean - number.value if n and number.value is not None else math.nan
    field = "test_perplexity" if table.metric == "perplexity" else "test_error"
    return {
        "table": table.name, "row": row.id, **{c: row.labels[c] for c in table.columns},
        "paper": number.display(), "paper_value": number.value, "tag": number.tag,
        "paper_source": number.source or "",
        "reproduced": _mean_std(mean, std, n, decimals),
        "mean": mean, "std": std, "n": n,
        "delta": "" if math.isnan(delta) else f"{delta:+.{decimals}f}",
        "seeds": ",".join(str(s) for s in sorted(plan.runs)),
        "scale": plan.scale if row.overrides else "",
        "epochs": ", ".join(str(e) for e in sorted(frame["epochs_done"].unique())) if used else "",
        "wall_time_per_run": duration(float(frame["wall_time_s"].mean())) if used else "",
        "wall_time_s": float(frame["wall_time_s"].mean()) if used else math.nan,
        "code_version": ", ".join(sorted(frame["code_version"].unique())) if used else "",
        "runs": ", ".join(r.id for r in used),
        "run_dirs": "; ".join(f"{RECORDS}/{r.id}" for r in used),
        "preset": " ".join(row.overrides) + (f" train.init_from=<row {row.init_from_row}'s run of that seed>"
                                             if row.init_from_row else ""),
        "status": _status(plan, n, table.paper, field),
        "figure": _row_figure(table, plan, out_dir) if figures and used else "",
        "note": row.note or "",
        **(_top5_cells(table, row, frame, decimals) if table.top5 else {}),
    }


def _top5_cells(table: Table, row: Row, frame: pd.DataFrame, decimals: int) -> dict:
    """The paper's top-5 number and the reproduced one (mean ± std over the runs that recorded it)."""
    values = convert(table, frame, "test_top5_error").dropna() if len(frame) else pd.Series(dtype=float)
    n = int(values.size)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    return {"paper_top5": (row.paper_top5 or NO_PAPER).display(), "reproduced_top5": _mean_std(mean, std, n, decimals)}


def build(table: Table, plans: list[RowPlan], found: Scan, out_dir: Path, *, scale: str,
          seeds: tuple[int, ...], command: str = "", paper_title: str = "", figures: bool = True) -> TableResult:
    """One line per row (its runs aggregated); draws each run's ``curves.png`` and each row's figure."""
    lines = [_line(table, plan, Path(out_dir), figures) for plan in plans]
    descriptions = [p.config.scale.description for p in plans if p.config is not None and not p.row.scale]
    verdicts = checks.judge_all(table.checks, {p.row.id: values(table, p) for p in plans})
    return TableResult(table, scale, tuple(seeds), pd.DataFrame(lines), plans, list(found.problems),
                       found.root, descriptions[0] if descriptions else None, command, paper_title, verdicts)
