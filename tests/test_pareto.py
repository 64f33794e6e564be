"""`bnnrepro bench --pareto`: each quant-grid row's error beside its packed and torch latencies and
sizes, the front, the report and figure (tiny architectures at scale=smoke, a grid CSV written here)."""
from __future__ import annotations

import csv
import json

import pytest

from bnnrepro.kernels import bench, pareto

FIELDS = ["row", "family", "W", "A", "G", "mean", "std", "n", "scale", "preset"]


def _grid(tmp_path, rows):
    path = tmp_path / "quant_grid_mnist.csv"
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        wr.writeheader()
        for r in rows:
            wr.writerow(r)
    return path


def _row(rid, w, a, g, mean, n=2, family="DoReFa", preset=None):
    preset = preset or f"+experiment=dorefa_mnist_mlp quant.w_bits={w} quant.a_bits={a} quant.g_bits={g}"
    return dict(row=rid, family=family, W=w, A=a, G=g, mean=mean, std="0.1" if n > 1 else "", n=n, scale="smoke",
                preset=preset)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pareto")
    grid = _grid(tmp, [_row("w32", 32, 32, 32, 1.5), _row("w1a2g32", 1, 2, 32, 2.0), _row("w1a2g4", 1, 2, 4, 2.2),
                       _row("w2a2", 2, 2, 4, 1.9), _row("skipped", 1, 1, 32, 9.9, n=0)])
    return pareto.run(grid, repeats=2), tmp


def test_every_reproduced_row_is_timed_and_only_those(result):
    res, _ = result
    assert [r["row"] for r in res["rows"]] == ["w32", "w1a2g32", "w1a2g4", "w2a2"]
    for r in res["rows"]:
        assert r["torch_ms_b1"] > 0 and r["torch_ms_b64"] > 0
        assert r["fastest_torch_b64"] in pareto.TORCH_PATHS and r["float32_bytes"] > 0


def test_a_float_row_says_why_it_has_no_packed_figures(result):
    w32 = result[0]["rows"][0]
    assert w32["engine"] is None and w32.get("packed_ms_b64") is None and w32["note"].startswith("not packable")
    assert w32["front"] is False


def test_packed_rows_agree_with_torch_and_are_smaller_than_float(result):
    rows = {r["row"]: r for r in result[0]["rows"]}
    for rid in ("w1a2g32", "w1a2g4", "w2a2"):
        r = rows[rid]
        assert r["engine"] == "bit-serial" and r["packed_ms_b1"] > 0 and r["packed_ms_b64"] > 0
        assert r["check"] == "identical predictions", r
        assert 0 < r["packed_bytes"] < r["float32_bytes"]
        assert r["speedup_b64"] == pytest.approx(r["torch_ms_b64"] / r["packed_ms_b64"])
    # G changes training only: one measurement serves both W1A2 rows
    assert rows["w1a2g32"]["packed_ms_b64"] == rows["w1a2g4"]["packed_ms_b64"]
    assert rows["w2a2"]["packed_bytes"] > rows["w1a2g32"]["packed_bytes"]  # 2-bit weights take more room


@pytest.mark.parametrize("values,want", [
    ([(1, 1, 1), (2, 2, 2)], [True, False]),  # dominated on every key
    ([(1, 2, 1), (2, 1, 1)], [True, True]),  # a trade-off: both on the front
    ([(1, 1, 1), (1, 1, 1)], [True, True]),  # equal rows do not beat each other
    ([(1, None, 1), (2, 2, 2)], [False, True]),  # a row lacking a figure is not on it
])
def test_front_keeps_the_rows_no_other_row_beats(values, want):
    rows = [dict(test_error=e, packed_ms_b64=t, packed_bytes=s) for e, t, s in values]
    assert pareto.front(rows) == want


def test_report_table_csv_json_and_figure(result):
    res, tmp = result
    md = pareto.write_reports(res, tmp / "out", "bnnrepro bench --pareto")
    text = md.read_text()
    assert "| w1a2g32 | 1 | 2 | 32 | 2.00 ± 0.10 (2) | bit-serial |" in text
    assert f"popcount variant {res['kernel_variant']['variant']}" in text and res["environment"]["cpu"] in text
    assert (tmp / "out" / "figures" / "pareto_mnist.png").stat().st_size > 1000
    with open(tmp / "out" / "pareto_mnist.csv") as f:
        assert [r["row"] for r in csv.DictReader(f)] == ["w32", "w1a2g32", "w1a2g4", "w2a2"]
    assert json.loads((tmp / "out" / "pareto_mnist.json").read_text())["command"] == "bnnrepro bench --pareto"


def test_cli_refuses_a_missing_grid_table(tmp_path, capsys):
    assert bench.main(["--pareto", "--grid", str(tmp_path / "none.csv"), "--no-write"]) == 2
    assert "no grid table" in capsys.readouterr().err


def test_a_grid_without_reproduced_rows_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no reproduced rows"):
        pareto.grid_rows(_grid(tmp_path, [_row("x", 1, 2, 32, 2.0, n=0)]))
