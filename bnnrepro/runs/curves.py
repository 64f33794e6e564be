"""One run's training curves, ``curves.png``: train/validation loss and validation/test error by
epoch, drawn from ``metrics.jsonl``. The training loop draws it when a run ends (:func:`draw_curves`:
a failure is a warning, never a failed run); ``bnnrepro table`` redraws stale ones.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display);
matplotlib is imported only when a figure is drawn.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from .files import CURVES, METRICS, read_jsonl


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's epoch lines; a torn last line (a run killed mid-write) is dropped."""
    return [r for r in read_jsonl(Path(run_dir) / METRICS) if "epoch" in r]


def figure(ncols: int, width: float = 10.0, height: float = 3.6):
    """A matplotlib Figure on an Agg canvas and its ``ncols`` axes (one row)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def epoch_axis(ax) -> None:
    """Label the x axis "epoch", with integer ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def series(rows: list[dict], key: str) -> tuple[list, list]:
    """(epochs, values) of ``key`` over metric rows, non-finite and missing values left out."""
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path | None:
    """Train loss, and validation/test error by epoch, the best-validation epoch marked.
    Writes ``<run_dir>/curves.png`` (or ``out``); None when the run has no epoch yet."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return None
    fig, (ax_loss, ax_err) = figure(2)
    ax_loss.plot(*series(rows, "train_loss"), marker=".", label="train loss")
    ax_loss.plot(*series(rows, "val_loss"), marker=".", label="validation loss")
    epoch_axis(ax_loss)
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_err.plot(*series(rows, "val_error"), marker=".", label="validation error")
    ax_err.plot(*series(rows, "test_error"), marker=".", label="test error")
    vals = [(r["val_error"], -r["epoch"]) for r in rows if isinstance(r.get("val_error"), (int, float))]
    if vals:
        best = -min(vals)[1]  # ties go to the later epoch, as the training loop does
        ax_err.axvline(best, color="grey", linestyle=":", label=f"best validation (epoch {best})")
    epoch_axis(ax_err)
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


def draw_curves(run_dir: str | Path, log=None) -> Path | None:
    """Write ``<run_dir>/curves.png`` at the end of a run. Never raises: a plotting failure (no
    display needed, but a broken matplotlib, a full disk...) prints one warning line and the run
    stays completed."""
    try:
        return plot_run(run_dir)
    except Exception as err:  # noqa: BLE001 - a figure must never fail a finished run
        print(f"warning: {Path(run_dir) / CURVES} not written ({type(err).__name__}: {err})",
              file=log or sys.stderr)
        return None
