"""Training-curve PNGs from metrics.jsonl."""
import os

from bnnrepro.report import curves
from test_report_fixtures import write_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_run_curves_png_written_and_redrawn_only_when_stale(tmp_path):
    run = write_run(tmp_path, "r", ["+experiment=bnn_mnist_theano"], 0, 1.0, epochs=3)
    png = curves.ensure_run_curves(run)
    assert png == run / "curves.png" and png.read_bytes().startswith(PNG)
    os.utime(png, (2e9, 2e9))  # newer than metrics.jsonl: kept as it is
    assert curves.ensure_run_curves(run) == png and png.stat().st_mtime == 2e9


def test_torn_last_line_and_empty_runs(tmp_path):
    run = write_run(tmp_path, "r", ["+experiment=bnn_mnist_theano"], 0, None, epochs=2)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a run killed mid-write
    assert [r["epoch"] for r in curves.read_metrics(run)] == [1, 2]
    assert curves.plot_run(run).read_bytes().startswith(PNG)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert curves.plot_run(empty) is None and curves.ensure_run_curves(empty) is None


def test_row_figure_overlays_seeds(tmp_path):
    runs = [(f"seed {s}", write_run(tmp_path, f"r{s}", ["+experiment=bnn_mnist_theano"], s, 1.0)) for s in (0, 1)]
    out = curves.plot_row(runs, tmp_path / "fig" / "row.png", "a title", paper_error=0.96)
    assert out.read_bytes().startswith(PNG)
    assert curves.plot_row([("x", tmp_path / "missing")], tmp_path / "none.png", "t") is None
