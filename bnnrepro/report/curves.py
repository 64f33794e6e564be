"""Training curves from ``metrics.jsonl``: one PNG per run, and one per table row (its seeds overlaid).

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from ..runs import CURVES, METRICS, read_jsonl



def read_metrics(run_dir: Path) -> list[dict]:
    """The run's epoch lines; a torn last line (a run killed mid-write) is dropped."""
    return [r for r in read_jsonl(Path(run_dir) / METRICS) if "epoch" in r]


def _figure(ncols: int, width: float = 10.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path | None:
    """Train loss, and validation/test error by epoch, the best-validation epoch marked.
    Writes ``<run_dir>/curves.png`` (or ``out``); None when the run has no epoch yet."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return None
    fig, (ax_loss, ax_err) = _figure(2)
    ax_loss.plot(*_series(rows, "train_loss"), marker=".", label="train loss")
    ax_loss.plot(*_series(rows, "val_loss"), marker=".", label="validation loss")
    _epoch_axis(ax_loss)
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_err.plot(*_series(rows, "val_error"), marker=".", label="validation error")
    ax_err.plot(*_series(rows, "test_error"), marker=".", label="test error")
    vals = [(r["val_error"], -r["epoch"]) for r in rows if isinstance(r.get("val_error"), (int, float))]
    if vals:
        best = -min(vals)[1]  # ties go to the later epoch, as the training loop does
        ax_err.axvline(best, color="grey", linestyle=":", label=f"best validation (epoch {best})")
    _epoch_axis(ax_err)
    ax_err.set_ylabel("error (%)")
    ax_err.legend()
    fig.suptitle(title or run_dir.name, fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else run_dir / CURVES
    fig.savefig(out, metadata={"Software": None})  # no library version: the same data, the same file
    return out


def ensure_run_curves(run_dir: str | Path) -> Path | None:
    """``curves.png`` in the run directory, redrawn only when ``metrics.jsonl`` is newer.
    None when there is nothing to draw or the directory is read-only."""
    run_dir = Path(run_dir)
    png, metrics = run_dir / CURVES, run_dir / METRICS
    if not metrics.is_file():
        return None
    if png.is_file() and png.stat().st_mtime >= metrics.stat().st_mtime:
        return png
    try:
        return plot_run(run_dir)
    except OSError:
        return None


def plot_row(runs: list[tuple[str, Path]], out: str | Path, title: str,
             paper_error: float | None = None) -> Path | None:
    """Test (solid) and validation (dashed) error by epoch of each ``(label, run_dir)``; the paper's
    error as a horizontal line when given (in percent)."""
    series = [(label, read_metrics(path)) for label, path in runs]
    series = [(label, rows) for label, rows in series if rows]
    if not series:
        return None
    fig, ax = _figure(1, width=6.4, height=4.0)
    for i, (label, rows) in enumerate(series):
        color = f"C{i % 10}"
        ax.plot(*_series(rows, "test_error"), color=color, label=f"{label} test")
        ax.plot(*_series(rows, "val_error"), color=color, linestyle="--", alpha=0.6, label=f"{label} validation")
    if paper_error is not None:
        ax.axhline(paper_error, color="black", linestyle=":", label=f"paper {paper_error:g}%")
    _epoch_axis(ax)
    ax.set_ylabel("error (%)")
    ax.set_title(textwrap.fill(title, 80), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})  # no library version: the same data, the same file
    return out
