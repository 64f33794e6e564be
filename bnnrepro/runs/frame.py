"""Runs as pandas DataFrames, for a notebook or a script as for ``bnnrepro runs`` and ``bnnrepro plot``.

- :func:`frame`: one row per run directory, every status (``completed``, ``running`` (its lock is
  held), ``interrupted``, ``diverged``, ``problem``): the summary columns :data:`COLUMNS`, then the run's ``config.yaml``
  flattened to dotted keys (``quant.w_bits``, ``train.epochs``, ``scale.name``; lists as tuples);
- :func:`epochs_frame`: one row per finished epoch (``metrics.jsonl``) with the run's ``id``;
- :func:`groups`: per group of config keys, n, mean and sample std of a metric over the completed
  runs, and their seeds; :func:`sweep_keys`: the keys that tell a sweep's runs apart, the seed aside.

Example::

    >>> from bnnrepro import runs
    >>> df = runs.frame(["results/runs"])                    # a folder, run dirs, runs.txt, sweep dirs
    >>> df[df.status == "completed"].groupby("experiment")["test_error"].mean()
    >>> runs.groups(df, ["experiment", "scale"])[["experiment", "scale", "n", "mean", "std", "seeds"]]
    >>> curves = runs.epochs_frame(["results/runs"])        # id, epoch, test_error, val_error, ...
    >>> curves.groupby("epoch")["test_error"].mean()
"""
from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Iterable

from ..errors import RunError
from .files import METRICS, RUNS_LIST, read_jsonl
from .fingerprint import _ignored, flatten
from .provenance import code_label
from .lock import holder
from .record import Problem, _run_dirs, is_run_dir, read_config, read_list, read_run, read_summary

COLUMNS = ("id", "status", "experiment", "paper", "scale", "seed", "epochs_done", "epochs", "test_error",
           "best_val_error", "final_test_error", "wall_time_s", "code", "dirty", "problem", "path")
STATUSES = ("completed", "running", "interrupted", "diverged", "problem")  # running: its lock is held now


def run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The run directories of ``paths``: each a run directory, a ``runs.txt``, a sweep folder holding
    one, or a folder searched for runs (recursively, as :func:`~.record.scan`). Duplicates dropped,
    order kept; a path that does not exist is a :class:`RunError`."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise RunError(f"{raw}: no such run directory, sweep folder or runs.txt")
        if path.is_file() and path.name == RUNS_LIST:
            found += read_list(path)
        elif path.is_file():
            raise RunError(f"{raw}: not a run directory, sweep folder or {RUNS_LIST}")
        elif is_run_dir(path):
            found.append(path)
        elif (path / RUNS_LIST).is_file():
            found += read_list(path / RUNS_LIST)
        else:
            found += list(_run_dirs(path))
    unique: dict[Path, Path] = {}
    for run in found:
        unique.setdefault(run.resolve(), run)
    return list(unique.values())


def _planned_epochs(cfg: dict) -> int | None:
    """The epochs a run's config asks for, its scale's cap applied (``config.effective_epochs``,
    which lives a layer above, on a plain dict)."""
    epochs, cap = (cfg.get("train") or {}).get("epochs"), (cfg.get("scale") or {}).get("epochs")
    if not isinstance(epochs, int):
        return None
    return min(epochs, cap) if isinstance(cap, int) and cap > 0 else epochs


def _hashable(value):
    """Lists as tuples (and an empty mapping as ()), so config values can key a group."""
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def run_row(path: Path) -> dict:
    """One run directory as a :func:`frame` row."""
    item = read_run(path)
    cfg = read_config(path)[0] or {}
    summary = read_summary(path) or {}
    epochs = [r for r in read_jsonl(path / METRICS) if "epoch" in r]
    if isinstance(item, Problem):
        status = "diverged" if summary.get("status") == "diverged" else "problem"
    else:
        status = "running" if item.status == "interrupted" and holder(path) is not None else item.status
    done = status == "completed"
    nan = math.nan
    row = {
        "id": path.name, "status": status, "experiment": cfg.get("experiment"), "paper": cfg.get("paper"),
        "scale": summary["scale"] if done else (cfg.get("scale") or {}).get("name"),
        "seed": summary["seed"] if done else cfg.get("seed"),
        "epochs_done": summary["epochs_done"] if done else max((r["epoch"] for r in epochs), default=0),
        "epochs": summary.get("epochs") if done else _planned_epochs(cfg),
        "test_error": summary["test_error"] if done else nan,
        "best_val_error": summary.get("best_val_error", nan) if done else nan,
        "final_test_error": summary.get("final_test_error", nan) if done else nan,
        # an unfinished run: the time of its finished epochs
        "wall_time_s": summary["wall_time_s"] if done else sum(r.get("epoch_time_s", 0.0) for r in epochs) or nan,
        "code": code_label(summary["code_version"]) if done else "",
        "dirty": bool(item.dirty) if done else False,
        "problem": item.why if isinstance(item, Problem) else "", "path": str(path),
    }
    for key, value in flatten(cfg).items():
        row.setdefault(key, _hashable(value))
    return row


def frame(paths: Iterable[str | os.PathLike]):
    """One row per run directory under ``paths`` (see :func:`run_dirs`): :data:`COLUMNS`, then the
    config's dotted keys. ``status`` is one of :data:`STATUSES`; ``problem`` says why for a run that
    is not counted; ``test_error`` (the BNN protocol's, at the best validation epoch) is NaN unless
    completed; ``wall_time_s`` of an unfinished run is the time of its finished epochs."""
    import pandas as pd

    rows = [run_row(path) for path in run_dirs(paths)]
    if not rows:
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.DataFrame(rows)
    config = sorted(c for c in df.columns if c not in COLUMNS)
    return df[list(COLUMNS) + config]


def epochs_frame(paths: Iterable[str | os.PathLike]):
    """One row per finished epoch of every run under ``paths``: ``id``, ``epoch`` and the
    metrics.jsonl fields (``train_loss``, ``val_error``, ``test_error``, ``lr``, ``epoch_time_s``...)."""
    import pandas as pd

    rows = [{"id": path.name, **r} for path in run_dirs(paths)
            for r in read_jsonl(path / METRICS) if "epoch" in r]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["id", "epoch"])


def sweep_keys(df) -> list[str]:
    """The config keys whose values differ among the runs of ``df``, the seed and the keys that do
    not change a result (:data:`~.fingerprint.IGNORED`: paths, device, threads...) aside: grouping
    by them groups the runs by everything but the seed."""
    config = [c for c in df.columns if c not in COLUMNS or c in ("experiment", "paper", "scale")]
    return [c for c in config if not _ignored(c) and df[c].map(repr).nunique() > 1]


def label_keys(df, keys: list[str]) -> list[str]:
    """The fewest of ``keys`` that still tell the groups apart: ``experiment`` and ``scale`` each stand
    for many fields (two presets differ in a dozen at once), so with them only the keys that differ
    within one experiment at one scale are kept. Grouping by the result groups as ``keys`` do."""
    names = [k for k in ("experiment", "scale") if k in keys]
    if not names:
        return list(keys)
    rest = [k for k in keys if k not in names and not (k.startswith("scale.") and "scale" in names)]
    within = df.groupby(names, dropna=False)
    return names + [k for k in rest if (within[k].agg(lambda c: c.map(repr).nunique()) > 1).any()]


def check_keys(df, keys: Iterable[str]) -> None:
    """A ValueError naming a key ``df`` has no column for, the nearest one and where to look."""
    for key in keys:
        if key not in df.columns:
            near = difflib.get_close_matches(key, [str(c) for c in df.columns], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"--group-by: no run has the key {key!r}{hint} (keys: the summary columns "
                             f"{', '.join(c for c in COLUMNS if c not in ('path', 'problem'))}, or a dotted "
                             "config key such as quant.w_bits)")


def groups(df, by: Iterable[str], metric: str = "test_error"):
    """Per group of ``by`` values (sorted): ``n`` completed runs with a finite ``metric``, its
    ``mean`` and sample ``std`` (NaN for n = 1), ``seeds`` and ``ids`` of those runs, and
    ``others``, how many of the group's runs are not completed, and ``mixed``, the config keys
    that change a result and still differ among them (a mean over those is not one config's)."""
    import pandas as pd

    by = list(by)
    check_keys(df, by + [metric])
    buckets: dict[tuple, list] = {}
    for _, row in df.iterrows():
        buckets.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key in sorted(buckets, key=repr):
        rows = buckets[key]
        good = [r for r in rows if r["status"] == "completed" and isinstance(r[metric], (int, float))
                and math.isfinite(r[metric])]
        values = [float(r[metric]) for r in good]
        mean = sum(values) / len(values) if values else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
        mixed = tuple(k for k in sweep_keys(df.loc[[r.name for r in good]]) if k not in by) if good else ()
        out.append({**dict(zip(by, key)), "n": len(values), "mean": mean, "std": std,
                    "seeds": tuple(sorted(int(r["seed"]) for r in good)), "ids": tuple(r["id"] for r in good),
                    "others": len(rows) - len(good), "mixed": mixed})
    return pd.DataFrame(out, columns=by + ["n", "mean", "std", "seeds", "ids", "others", "mixed"])


def format_duration(seconds: float | None) -> str:
    """``42 s``, ``8.5 min``, ``3.2 h``, ``2.1 d``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 1.5 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def group_lines(table, by: list[str], metric: str = "test_error") -> list[str]:
    """One line per row of :func:`groups`: ``experiment=x scale=quick  n=3  test_error 1.95 ± 0.08 %
    seeds 0,1,2`` (mean ± sample std)."""
    lines, unit = [], " %" if metric.endswith("_error") else ""
    for _, g in table.iterrows():
        label = group_label(g, by) or "all runs"
        if g["n"] == 0:
            value = "no completed run"
        elif g["n"] == 1:
            value = f"{g['mean']:.2f}{unit} (one run: no std)"
        else:
            value = f"{g['mean']:.2f} ± {g['std']:.2f}{unit}"
        others = f"  (+{g['others']} not completed)" if g["others"] else ""
        seeds = ",".join(map(str, g["seeds"])) or "-"
        mixed = g.get("mixed") or ()
        warn = (f"  [mixes configs: {', '.join(mixed[:4])}{', ...' if len(mixed) > 4 else ''} differ; "
                "add them to --group-by]" if mixed else "")
        lines.append(f"{label}  n={g['n']}  {metric} {value}  seeds {seeds}{others}{warn}")
    return lines


def group_label(row, by: list[str]) -> str:
    """``experiment=bnn_mnist_theano scale=quick``: the ``by`` values of a row."""
    return " ".join(f"{k}={_text(row[k])}" for k in by)


def _text(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # an int column that pandas made float (a run without the key)
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)
