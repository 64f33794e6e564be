"""The committed results/ are traceable: every record is a plain record (no checkpoint, no path of
the machine that made it, a clean tree), every record is cited by a committed file, and
`bnnrepro table all --no-train --out <copy of results>` rewrites every table and study file byte for
byte from the records alone."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from bnnrepro import runs

RESULTS = Path(__file__).resolve().parents[1] / "results"
RECORDS = RESULTS / "runs"
MACHINE_PATH = re.compile(r"(?<![\w<>.~-])/(work|root|home|tmp|Users|mnt|scratch)/")
RECORD_NAMES = {"config.yaml", "metrics.jsonl", "summary.json", "sweeps"}


def _records() -> list[Path]:
    return sorted(p for p in RECORDS.iterdir() if p.is_dir()) if RECORDS.is_dir() else []


def test_results_have_records():
    assert _records(), "results/runs/ holds no run records: every reproduced number needs its runs"


@pytest.mark.parametrize("record", _records(), ids=lambda p: p.name)
def test_a_record_is_plain_clean_and_names_no_machine_path(record):
    assert {p.name for p in record.iterdir()} <= RECORD_NAMES
    run = runs.read_run(record)
    assert isinstance(run, runs.Run) and run.status == "completed", run
    assert not run.dirty, f"{record.name} was made on a modified tree"
    for meta in (record / "sweeps").glob("*.json"):  # a study's sweeps: made on a clean tree too
        assert "+dirty" not in str(json.loads(meta.read_text()).get("code")), meta
    for path in record.rglob("*"):
        if path.is_file():
            assert not path.name.endswith(".pt")
            found = MACHINE_PATH.search(path.read_text())
            assert found is None, f"{path}: a path of the machine ({found.group(0)}...)"


def test_every_record_is_cited_by_a_committed_file():
    text = "\n".join(p.read_text() for p in RESULTS.rglob("*") if p.suffix in (".md", ".csv")
                     and RECORDS not in p.parents)
    uncited = [r.name for r in _records() if r.name not in text]
    assert not uncited, f"records no committed table or study cites: {uncited}"


def test_no_train_rebuilds_the_committed_results_byte_for_byte(tmp_path, monkeypatch, mnist_root):
    from bnnrepro.report import commands

    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy)
    generated = [p for p in copy.rglob("*") if p.is_file() and RECORDS.name not in p.relative_to(copy).parts[:1]
                 and p.suffix in (".md", ".csv", ".tex", ".png") and p.name != "README.md"]
    for path in generated:
        path.unlink()
    monkeypatch.setenv("BNNREPRO_DATA", str(mnist_root))
    empty_runs = tmp_path / "no-runs"
    # the machine the tables were made on had no GPU, and MNIST and Fashion-MNIST (Debian's package)
    # but none of the other datasets: the same here, whatever this machine has
    from bnnrepro.report.plan import data_check

    def made_with(cfg):
        return None if cfg.data.name in ("mnist", "fashion_mnist") else data_check(cfg)

    code = commands.table_main(["all", "--no-train", "scale=quick", f"runs_dir={empty_runs}", "--out", str(copy)],
                               has_cuda=lambda: False, check_data=made_with)
    assert code == 0
    for committed in sorted(RESULTS.rglob("*")):
        rel = committed.relative_to(RESULTS)
        if not committed.is_file() or rel.parts[0] == RECORDS.name or committed.name == "README.md" \
                or committed.suffix not in (".md", ".csv", ".tex", ".png"):
            continue
        if committed.name.startswith(("kernels.", "train_speed.", "pareto_mnist.")):
            continue  # the benchmarks measure a machine (pareto's latencies too); they are not built from records
        rebuilt = copy / rel
        assert rebuilt.is_file(), f"{rel} is not rebuilt by bnnrepro table all --no-train"
        if committed.suffix == ".png":
            continue  # pictures are redrawn; their pixels depend on the matplotlib build, not the data
        assert rebuilt.read_bytes() == committed.read_bytes(), f"{rel} differs when rebuilt from the records"


def test_committed_pareto_errors_are_the_quant_grids():
    """pareto_mnist is a benchmark (its latencies measure a machine), but its error column must be the
    record-built quant grid's, row for row: the grid is rebuilt from the records above."""
    with open(RESULTS / "quant_grid_mnist.csv", newline="") as f:
        grid = {r["row"]: r for r in csv.DictReader(f)}
    with open(RESULTS / "pareto_mnist.csv", newline="") as f:
        pareto = list(csv.DictReader(f))
    assert pareto, "pareto_mnist.csv has no rows"
    for row in pareto:
        assert row["row"] in grid, f"pareto row {row['row']} is not in quant_grid_mnist.csv"
        want = grid[row["row"]]
        assert float(row["test_error"]) == pytest.approx(float(want["mean"]), abs=1e-9), row["row"]
        assert int(row["n"]) == int(want["n"]), row["row"]
    reproduced = {k for k, r in grid.items() if r["mean"]}
    assert {r["row"] for r in pareto} == reproduced, "pareto_mnist.csv lacks a reproduced grid row"
