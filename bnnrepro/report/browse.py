"""``bnnrepro runs`` and ``bnnrepro plot``: look at the runs already made, from their records
(:func:`bnnrepro.runs.frame` and :func:`bnnrepro.runs.epochs_frame`)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .. import commandline, runs
from ..errors import RunError, UsageError
from .curves import plot_groups

RUNS_HELP = """\
List runs: id, status (completed, running: being trained now, interrupted: resumable, diverged,
problem: not counted, and why), experiment, scale, seed, epochs done/total, test error (at the best validation epoch), wall time.
With --group-by, one line per group: n completed runs, mean ± sample std of their test error, seeds.
The same data as a pandas DataFrame: bnnrepro.runs.frame(paths)."""

PLOT_HELP = """\
Curves of groups of runs over epochs: per group, the mean of --metric over its runs at each epoch,
with a band from the smallest to the largest run's value (min-max). Groups: --group-by keys, by
default every config key that differs between the runs, the seed aside (a sweep's seeds are one group)."""


def _keys(text: str | None) -> list[str]:
    return [k.strip() for k in (text or "").split(",") if k.strip()]


def _paths(args) -> list:
    if args.paths:
        return list(args.paths)
    root = commandline.runs_root(args.overrides)
    if not root.is_dir():
        raise RunError(f"no runs root at {root}; give run paths, or runs_dir=DIR (or env {runs.RUNS_ENV})")
    return [root]


def _json_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return list(value) if isinstance(value, tuple) else value


def _records(df, columns) -> list[dict]:
    return [{c: _json_value(row[c]) for c in columns} for _, row in df.iterrows()]


def _label(row) -> str:
    return str(row["experiment"] or row["paper"] or row.get("model.name") or "-")


def _epochs(row) -> str:
    total = row["epochs"]
    return f"{row['epochs_done']}/{'?' if total is None or total != total else int(total)}"


def _error(value) -> str:
    return "-" if value != value else f"{value:.2f} %"


def run_lines(df) -> list[str]:
    """The listing: a header and one aligned line per run (a problem's reason after it)."""
    header = ("id", "status", "experiment", "scale", "seed", "epochs", "test error", "wall time")
    rows = [(r["id"], r["status"], _label(r), str(r["scale"]), str(r["seed"]), _epochs(r),
             _error(r["test_error"]), runs.format_duration(r["wall_time_s"])) for _, r in df.iterrows()]
    widths = [max(len(x) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(header, widths)).rstrip()]
    for line, problem in zip(rows, df["problem"]):
        text = "  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip()
        lines.append(f"{text}  ({problem})" if problem else text)
    return lines


def runs_main(argv: list[str]) -> int:
    args = commandline.parse(commandline.runs_parser(RUNS_HELP, runs.STATUSES), argv)
    statuses = _keys(args.status)
    unknown = [s for s in statuses if s not in runs.STATUSES]
    if unknown:
        raise UsageError(f"runs: --status {unknown[0]!r} is unknown; allowed: {', '.join(runs.STATUSES)}")
    paths = _paths(args)
    df = runs.frame(paths)
    if statuses:
        df = df[df["status"].isin(statuses)]
    by = _keys(args.group_by)
    if by:
        table = runs.groups(df, by)
        lines = runs.group_lines(table, by)
        records = _records(table, list(table.columns))
    else:
        lines = run_lines(df) if len(df) else []
        records = _records(df, list(runs.COLUMNS))
    if args.json:
        commandline.write_json(json.dumps(records, indent=2), args.json)
        if args.json == "-":
            return 0
    if not len(df):
        print(f"no runs under {', '.join(map(str, paths))}" + (f" with status {args.status}" if statuses else ""))
        return 0
    print("\n".join(lines))
    if not by:
        counts = df["status"].value_counts()
        print(f"{len(df)} runs: " + ", ".join(f"{counts[s]} {s}" for s in runs.STATUSES if s in counts))
    return 0


def plot_main(argv: list[str]) -> int:
    args = commandline.parse(commandline.plot_parser(PLOT_HELP), argv)
    df = runs.frame(args.paths)
    epochs = runs.epochs_frame(args.paths)
    if epochs.empty:
        raise RunError(f"{', '.join(args.paths)}: no run has a finished epoch (metrics.jsonl) to plot")
    numeric = [c for c in epochs.columns if c not in ("id", "epoch") and epochs[c].dtype.kind in "if"]
    if args.metric not in numeric:
        raise UsageError(f"plot: --metric {args.metric!r} is not a metrics.jsonl field; allowed: {', '.join(numeric)}")
    by = _keys(args.group_by) or runs.label_keys(df, runs.sweep_keys(df))
    runs.check_keys(df, by)
    members: dict[str, list[str]] = {}
    for _, row in df.iterrows():
        members.setdefault(runs.group_label(row, by) or _label(row), []).append(row["id"])
    groups = [(label, epochs[epochs["id"].isin(ids)]) for label, ids in sorted(members.items())]
    out = Path(args.out) if args.out else commandline.report_dir("plot", None, args.overrides) / f"{args.metric}.png"
    written = plot_groups(groups, args.metric, out)
    if written is None:
        raise RunError(f"no run has a finite {args.metric} to plot")
    print(f"{written}: {len(groups)} group(s), {epochs['id'].nunique()} runs; band: min-max over each group's runs")
    return 0

