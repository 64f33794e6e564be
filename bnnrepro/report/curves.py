"""Training curves of several runs: one PNG per table row (its seeds overlaid), and the
mean-and-band curves of groups of runs (``bnnrepro plot``). One run's own ``curves.png`` is drawn by
:mod:`bnnrepro.runs.curves` (the training loop writes it too), re-exported here.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from ..runs.curves import ensure_run_curves, epoch_axis, figure, plot_run, read_metrics, series  # noqa: F401


def plot_row(runs: list[tuple[str, Path]], out: str | Path, title: str,
             paper_error: float | None = None) -> Path | None:
    """Test (solid) and validation (dashed) error by epoch of each ``(label, run_dir)``; the paper's
    error as a horizontal line when given (in percent)."""
    drawn = [(label, read_metrics(path)) for label, path in runs]
    drawn = [(label, rows) for label, rows in drawn if rows]
    if not drawn:
        return None
    fig, ax = figure(1, width=6.4, height=4.0)
    for i, (label, rows) in enumerate(drawn):
        color = f"C{i % 10}"
        ax.plot(*series(rows, "test_error"), color=color, label=f"{label} test")
        ax.plot(*series(rows, "val_error"), color=color, linestyle="--", alpha=0.6, label=f"{label} validation")
    if paper_error is not None:
        ax.axhline(paper_error, color="black", linestyle=":", label=f"paper {paper_error:g}%")
    epoch_axis(ax)
    ax.set_ylabel("error (%)")
    ax.set_title(textwrap.fill(title, 80), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})  # no library version: the same data, the same file
    return out


def plot_groups(groups: list[tuple[str, object]], metric: str, out: str | Path, title: str = "") -> Path | None:
    """One curve per ``(label, epochs)`` group (``epochs``: :func:`bnnrepro.runs.epochs_frame` rows of
    the group's runs): the mean of ``metric`` over the runs at each epoch, and a band from the
    smallest to the largest run's value there (min–max, not ±std: with 2-3 seeds a std says little,
    while min–max shows every run). None when no group has a finite value of ``metric``."""
    from matplotlib import colormaps

    fig, ax = figure(1, width=7.2, height=4.4)
    palette = [f"C{i}" for i in range(10)] if len(groups) <= 10 else [colormaps["tab20"](i % 20) for i in range(len(groups))]
    drawn = 0
    for i, (label, epochs) in enumerate(groups):
        values = epochs[["epoch", "id", metric]].dropna()
        values = values[values[metric].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))]
        if values.empty:
            continue
        by_epoch = values.groupby("epoch")[metric].agg(["mean", "min", "max"])
        color = palette[i]
        n = values["id"].nunique()
        ax.plot(by_epoch.index, by_epoch["mean"], color=color, label=f"{label} (n={n})")
        if n > 1:
            ax.fill_between(by_epoch.index, by_epoch["min"], by_epoch["max"], color=color, alpha=0.2, linewidth=0)
        drawn += 1
    if not drawn:
        return None
    epoch_axis(ax)
    ax.set_ylabel(metric + (" (%)" if metric.endswith("_error") else ""))
    ax.set_title(textwrap.fill(title or f"{metric}: mean over runs, band min–max", 80), fontsize=8)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: labels can be long
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None}, bbox_inches="tight")  # no library version in the file
    return out
