"""Table rows that start from another row's trained run (``init_from_row``: DoReFa's "initialized
from the 32-bit model" rows): which runs count, what waits, what is launched and with which source;
and tables with top-5 columns (``top5: true``: the ImageNet tables)."""
from __future__ import annotations

import pytest

from bnnrepro.report import launch, targets
from bnnrepro.report.plan import link_sources, plan_row, waiting_for_source
from bnnrepro.report.tables import _status
from bnnrepro.runs import scan
from conftest import compose
from test_report_fixtures import data_here, no_cuda, write_run

FLOAT = ["+experiment=dorefa_mnist_mlp", "quant.w_bits=32", "quant.a_bits=32", "quant.g_bits=32"]
BINARY = ["+experiment=dorefa_mnist_mlp", "quant.w_bits=1", "quant.a_bits=2", "quant.g_bits=32"]


def _table(init_from_row="float"):
    raw = {"paper": "dorefa", "title": "t", "tables": [{
        "id": "t", "title": "t", "metric": "test_error", "unit": "percent", "source": "s", "columns": ["m"],
        "rows": [{"id": "float", "labels": {"m": "float"}, "paper": None, "overrides": FLOAT},
                 {"id": "plain", "labels": {"m": "plain"}, "paper": None, "overrides": BINARY},
                 {"id": "init", "labels": {"m": "init"}, "paper": None, "overrides": BINARY,
                  "init_from_row": init_from_row}]}]}
    return targets.parse(raw).tables[0]


def _plans(table, root, seeds=(0, 1)):
    plans = [plan_row(r, "smoke", seeds, scan(root), composer=compose, check_data=data_here, has_cuda=no_cuda)
             for r in table.rows]
    link_sources(plans)
    return {p.row.id: p for p in plans}


def test_init_row_waits_for_its_source_then_launches_from_it(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    table = _table()
    plans = _plans(table, root)
    assert waiting_for_source(plans["init"]) == [0, 1]
    assert "start from row float's run" in _status(plans["init"], 0, "dorefa", "test_error")
    jobs = launch.plan_jobs(list(plans.values()), "smoke", root)
    assert not any("train.init_from" in " ".join(j.argv) for j in jobs)  # nothing to start from yet
    source = write_run(root, "float-s1", FLOAT, 1, 2.0)
    plans = _plans(table, root)
    assert waiting_for_source(plans["init"]) == [0, 1]  # a record without a checkpoint starts nothing
    (source / "best.pt").write_bytes(b"")
    plans = _plans(table, root)
    assert waiting_for_source(plans["init"]) == [0]
    (job,) = [j for j in launch.plan_jobs(list(plans.values()), "smoke", root) if "train.init_from" in " ".join(j.argv)]
    assert "seed=1" in job.argv and f"train.init_from='{source.resolve()}'" in job.argv
    assert [o for o in BINARY if o not in job.argv] == []


def test_an_initialised_run_counts_for_the_init_row_only(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "float-s0", FLOAT, 0, 2.0)
    write_run(root, "plain-s0", BINARY, 0, 3.0)
    write_run(root, "init-s0", BINARY + [f"train.init_from={root / 'float-s0'}"], 0, 2.5)
    plans = _plans(_table(), root, seeds=(0,))
    assert [r.id for r in plans["plain"].runs.values()] == ["plain-s0"]
    assert [r.id for r in plans["init"].runs.values()] == ["init-s0"]
    assert [r.id for r in plans["float"].runs.values()] == ["float-s0"]


@pytest.mark.parametrize("bad", ["nowhere", "init"])
def test_init_from_row_must_name_a_runnable_row_of_the_table(bad):
    with pytest.raises(targets.TargetsError, match="init_from_row"):
        _table(init_from_row=bad)


def test_a_row_may_not_carry_a_machine_path_as_init_from():
    raw = {"paper": "p", "title": "t", "tables": [{
        "id": "t", "title": "t", "metric": "test_error", "unit": "percent", "source": "s", "columns": ["m"],
        "rows": [{"id": "a", "labels": {"m": "a"}, "paper": None, "overrides": BINARY + ["train.init_from=/x"]}]}]}
    with pytest.raises(targets.TargetsError, match="train.init_from"):
        targets.parse(raw)


def test_a_top5_table_shows_the_papers_and_the_reproduced_top5(tmp_path):
    from bnnrepro.report.tables import _line

    raw = {"paper": "dorefa", "title": "t", "tables": [{
        "id": "t", "title": "t", "metric": "accuracy", "unit": "percent", "source": "s", "columns": ["m"],
        "top5": True,
        "rows": [{"id": "plain", "labels": {"m": "plain"}, "paper": {"value": 50.0, "tag": "U"},
                  "paper_top5": {"value": 75.5, "tag": "U"}, "overrides": BINARY}]}]}
    table = targets.parse(raw).tables[0]
    root = tmp_path / "runs"
    write_run(root, "a-s0", BINARY, 0, 20.0, test_top5_error=4.0)
    write_run(root, "a-s1", BINARY, 1, 22.0, test_top5_error=6.0)
    plans = _plans(table, root)
    line = _line(table, plans["plain"], tmp_path, figures=False)
    # accuracy in percent: 100 - error; top-5 mean of 96 and 94, sample std sqrt(2)
    assert line["reproduced"] == "79.00 ± 1.41" and line["paper_top5"] == "75.5"
    assert line["reproduced_top5"] == "95.00 ± 1.41"
    with pytest.raises(targets.TargetsError, match="top5"):
        targets.parse({**raw, "tables": [{**raw["tables"][0], "top5": "yes"}]})
