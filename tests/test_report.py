"""Paper-vs-reproduced tables from fixture runs: aggregation, the paper's numbers and tags, rows
that cannot run here, corrupt and partial runs, idempotent launching, the CLI's bad input."""
import io
import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from bnnrepro import runs as run_records
from bnnrepro.report import commands, launch, pipeline, targets
from conftest import compose
from test_report_fixtures import data_here, no_cuda, write_run

THEANO = ["+experiment=bnn_mnist_theano"]
TORCH7 = ["+experiment=bnn_mnist_torch7"]


@pytest.fixture(autouse=True)
def clean_tree(monkeypatch):
    """The tests launch (fake) training: the checkout they run in counts as clean, edited or not."""
    monkeypatch.setattr(pipeline, "code_version", lambda: {"package": "0.1.0", "git_commit": "0" * 40,
                                                           "git_dirty": False})


def _make(runs, out, papers=("bnn",), **kw):
    kw.setdefault("train", False)
    return pipeline.make_tables([targets.load(p) for p in papers], runs_dir=runs, out_dir=out, scale="smoke",
                                seeds=(0, 1, 2), check_data=data_here, has_cuda=no_cuda,
                                command="bnnrepro table bnn --scale smoke --seeds 0,1,2", log=io.StringIO(), **kw)


def _row(outcome, row_id, table="bnn_table1"):
    result = next(r for r in outcome.results if r.table.name == table)
    return result.frame.set_index("row").loc[row_id]


# ---------------------------------------------------------------------------------- targets

def test_every_packaged_targets_file_parses_with_tags():
    for paper in targets.PAPERS:
        t = targets.load(paper)
        assert t.paper == paper and t.tables
        for table in t.tables:
            for row in table.rows:
                assert row.paper is None or row.paper.tag in targets.TAGS
                assert bool(row.overrides) != bool(row.not_reproduced)


@pytest.mark.parametrize("paper", targets.PAPERS)
def test_every_reproduced_row_composes_and_validates(paper):
    """A row names a preset that exists and passes validation at every scale, unless the row says
    why it cannot (QNN's PTB LSTM is invalid on purpose: its data is not supported by the trainer)."""
    from bnnrepro.compose import hydra_composer
    from bnnrepro.report import plan

    composer = hydra_composer()
    for table in targets.load(paper).tables:
        for row in table.rows:
            if not row.overrides:
                continue
            for scale in ("smoke", "quick", "paper"):
                cfg, why = plan.compose_row(row, scale, composer)
                if why is not None and "preset is invalid" in why and row.note:
                    continue
                assert why is None, f"{paper}/{table.name}/{row.id} at scale={scale}: {why}"


def test_bnn_table1_rows_are_the_papers():
    (table,) = targets.load("bnn").tables
    at_command_scale = [r for r in table.rows if r.scale is None]
    cells = {(r.labels["method"], r.labels["dataset"]): (r.paper.display(), r.paper.tag) for r in at_command_scale}
    assert len(cells) == 20  # papers.md §a.1: 10 methods, the cells that have a number
    assert cells[("BNN (Theano)", "MNIST")] == ("0.96", "SEC")
    assert cells[("BNN (Theano)", "CIFAR-10")] == ("11.40", "SEC")
    assert cells[("BNN (Torch7)", "SVHN")] == ("2.53", "SEC")
    assert cells[("BinaryConnect (Courbariaux et al., 2015)", "MNIST")] == ("1.29±0.08", "SEC")
    assert cells[("Gated pooling (Lee et al., 2015)", "CIFAR-10")] == ("7.62", "SEC")
    reproduced = {r.id for r in at_command_scale if r.overrides}
    assert reproduced == {f"{impl}-{d}" for impl in ("theano", "torch7") for d in ("mnist", "svhn", "cifar10")}
    # the rows pinned to another scale repeat a cell's paper number with that cell's preset (the
    # paper-protocol Torch7 row adds only the numerics knob that made 200 epochs fit a session)
    pinned = {r.id: r for r in table.rows if r.scale is not None}
    assert {i: (r.scale, r.seeds) for i, r in pinned.items()} == {
        "torch7-mnist-paper": ("paper", (0,)), "theano-mnist-medium": ("medium", (0,))}
    extra = {"torch7-mnist-paper": ("train.precision=bf16",)}
    by_id = {r.id: r for r in table.rows}
    for rid, r in pinned.items():
        twin = by_id[rid.rsplit("-", 1)[0]]
        assert (r.paper, r.overrides) == (twin.paper, twin.overrides + extra.get(rid, ()))


def test_a_pinned_row_is_planned_and_launched_at_its_own_scale_and_seeds(tmp_path):
    from bnnrepro.report.plan import RowPlan

    (table,) = targets.load("bnn").tables
    row = next(r for r in table.rows if r.id == "theano-mnist-medium")
    outcome = _make(tmp_path / "runs", tmp_path / "results")
    line = _row(outcome, "theano-mnist-medium")
    assert line["scale"] == "medium" and line["n"] == 0
    plan = RowPlan(row, "medium", (0,), config=compose(list(row.overrides) + ["scale=medium"]))
    # a table at another scale never launches it (hours of training); one at its scale does
    assert launch.plan_jobs([plan], "quick", tmp_path) == []
    (job,) = launch.plan_jobs([plan], "medium", tmp_path)
    assert "scale=medium" in job.argv and "seed=0" in job.argv
    assert "bnnrepro train +experiment=bnn_mnist_theano scale=medium seed=<seed>" in line["status"]


@pytest.mark.parametrize("used,counts", [("fp32", True), ("bf16", False), (None, True)])
def test_a_run_made_with_precision_auto_counts_by_what_it_used(used, counts):
    from bnnrepro.report.plan import as_trained, differences, fingerprint

    expected = fingerprint({"train": {"precision": "fp32", "epochs": 3}})
    config = {"train": {"precision": "auto", "epochs": 3}}
    summary = {"precision": {"requested": "auto", "used": used}} if used else {}
    assert (differences(expected, as_trained(config, summary)) == []) == counts
    assert config["train"]["precision"] == "auto"  # the record itself is left as it is


def test_targets_errors_name_the_row_and_field():
    raw = {"paper": "x", "title": "t", "tables": [{"id": "t1", "title": "T", "metric": "test_error",
           "unit": "percent", "source": "s", "columns": ["m"],
           "rows": [{"id": "r1", "labels": {"m": "a"}, "paper": {"value": 1.0, "tag": "MAYBE"},
                     "overrides": ["+experiment=bnn_mnist_theano"]}]}]}
    with pytest.raises(targets.TargetsError, match=r"row 'r1'.*paper.tag='MAYBE'"):
        targets.parse(raw)
    raw["tables"][0]["rows"][0]["paper"]["tag"] = "U"
    raw["tables"][0]["rows"][0]["overrides"].append("seed=3")
    with pytest.raises(targets.TargetsError, match="must not set seed"):
        targets.parse(raw)


# ---------------------------------------------------------------------------------- tables

def test_table_from_fixture_runs(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    errors = {0: 1.0, 1: 2.0, 2: 4.0}
    for seed, err in errors.items():
        write_run(runs, f"theano-s{seed}", THEANO, seed, err, wall=30.0)
    write_run(runs, "torch7-s1", TORCH7, 1, 3.5)
    outcome = _make(runs, out)
    assert outcome.launched == [] and outcome.problems == []

    theano = _row(outcome, "theano-mnist")
    assert theano["n"] == 3
    assert theano["mean"] == pytest.approx(statistics.mean(errors.values()))
    assert theano["std"] == pytest.approx(statistics.stdev(errors.values()))
    assert theano["reproduced"] == "2.33 ± 1.53" and theano["delta"] == "+1.37"
    assert (theano["paper"], theano["tag"]) == ("0.96", "SEC")
    assert theano["runs"] == "theano-s0, theano-s1, theano-s2"
    assert theano["code_version"] == "0.1.0@0123456" and theano["status"] == "ok"
    assert theano["epochs"] == "2" and theano["wall_time_per_run"] == "30 s" and theano["scale"] == "smoke"

    torch7 = _row(outcome, "torch7-mnist")
    assert torch7["n"] == 1 and torch7["reproduced"] == "3.50" and math.isnan(torch7["std"])
    assert "1 of 3 seeds" in torch7["status"] and "seeds 0, 2 not run yet" in torch7["status"]

    cifar = _row(outcome, "theano-cifar10")  # no data here: stays in the table and says why
    assert cifar["n"] == 0 and cifar["paper"] == "11.40"
    assert cifar["status"].startswith("data not available here: cifar10")
    cited = _row(outcome, "maxout-mnist")
    assert cited["status"].startswith("not reproduced: another paper's method") and cited["paper"] == "0.94"

    md = (out / "bnn_table1.md").read_text()
    assert "| BNN (Theano) | MNIST | 0.96 | [SEC] | 2.33 ± 1.53 | +1.37 | 3 | smoke |" in md
    assert "[theano-s0](runs/theano-s0/), [theano-s1](runs/theano-s1/), [theano-s2](runs/theano-s2/)" in md
    assert "0.1.0@0123456" in md
    for seed in range(3):  # each counted run has its record beside the table, and no checkpoint
        assert sorted(p.name for p in (out / "runs" / f"theano-s{seed}").iterdir()) == ["config.yaml", "metrics.jsonl", "summary.json"]
    assert "[png](figures/bnn_table1/theano-mnist.png)" in md
    assert md.count("\n| ") == 23  # header + one line per paper row + the two rows pinned to a scale
    csv = pd.read_csv(out / "bnn_table1.csv")
    assert len(csv) == 22 and list(csv["row"])[:3] == ["torch7-mnist", "torch7-mnist-paper", "torch7-svhn"]
    assert csv.set_index("row").loc["theano-mnist", "n"] == 3
    tex = (out / "bnn_table1.tex").read_text()
    assert r"2.33 $\pm$ 1.53" in tex and r"\bottomrule" in tex
    assert (out / "figures" / "bnn_table1" / "theano-mnist.png").is_file()
    assert (runs / "theano-s0" / "curves.png").is_file()  # each run's curves, drawn from metrics.jsonl


def test_metric_conversion_to_the_papers_unit(tmp_path):
    """DoReFa reports accuracy as a fraction: reproduced = 1 - test_error / 100."""
    table = targets.parse({"paper": "p", "title": "t", "tables": [{
        "id": "acc", "title": "T", "metric": "accuracy", "unit": "fraction", "source": "s", "columns": ["m"],
        "rows": [{"id": "r", "labels": {"m": "x"}, "paper": {"value": 0.975, "tag": "U"},
                  "overrides": THEANO}]}]})
    runs = tmp_path / "runs"
    write_run(runs, "a", THEANO, 0, 2.0)
    write_run(runs, "b", THEANO, 1, 4.0)
    outcome = pipeline.make_tables([table], runs_dir=runs, out_dir=tmp_path / "out", scale="smoke", seeds=(0, 1),
                                   train=False, check_data=data_here, has_cuda=no_cuda, figures=False,
                                   log=io.StringIO())
    line = outcome.results[0].frame.iloc[0]
    assert line["mean"] == pytest.approx(0.97) and line["reproduced"] == "0.9700 ± 0.0141"
    assert line["delta"] == "-0.0050"


def test_corrupt_and_partial_runs_are_reported_and_skipped(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    write_run(runs, "good", THEANO, 0, 1.5)
    bad_json = write_run(runs, "bad-json", THEANO, 1, 9.0)
    (bad_json / "summary.json").write_text('{"status": "completed", "test_error": ')
    write_run(runs, "running", THEANO, 1, 9.0, status="running")
    missing = write_run(runs, "missing-field", THEANO, 1, 9.0)
    summary = json.loads((missing / "summary.json").read_text())
    del summary["code_version"]
    (missing / "summary.json").write_text(json.dumps(summary))
    write_run(runs, "nan", THEANO, 1, float("nan"))
    wrong = write_run(runs, "wrong-type", THEANO, 1, 9.0)
    summary = json.loads((wrong / "summary.json").read_text())
    summary["seed"] = "1"
    (wrong / "summary.json").write_text(json.dumps(summary))
    mismatch = write_run(runs, "seed-mismatch", THEANO, 2, 9.0)
    summary = json.loads((mismatch / "summary.json").read_text())
    summary["seed"] = 1
    (mismatch / "summary.json").write_text(json.dumps(summary))
    no_cfg = write_run(runs, "no-config", THEANO, 1, 9.0)
    (no_cfg / "config.yaml").unlink()
    (runs / "only-checkpoint").mkdir()
    (runs / "only-checkpoint" / "last.pt").write_bytes(b"")
    (runs / "not-a-list").mkdir()
    (runs / "not-a-list" / "summary.json").write_text("[1, 2]")
    write_run(runs, "interrupted", THEANO, 2, None)

    found = run_records.scan(runs)
    reasons = {p.path.name: p.why for p in found.problems}
    assert set(reasons) == {"bad-json", "running", "missing-field", "nan", "wrong-type", "seed-mismatch",
                            "no-config", "only-checkpoint", "not-a-list"}
    assert "not valid JSON" in reasons["bad-json"]
    assert reasons["running"] == "status is 'running', not 'completed'"
    assert reasons["missing-field"] == "summary.json lacks code_version"
    assert reasons["nan"] == "test_error is nan"
    assert "seed='1'" in reasons["wrong-type"]
    assert "disagrees with config.yaml" in reasons["seed-mismatch"]
    assert "no config.yaml" in reasons["no-config"]
    assert [r.path.name for r in found.completed] == ["good"]
    assert [r.path.name for r in found.interrupted] == ["interrupted"]

    outcome = _make(runs, out)  # never crashes, never counts them
    theano = _row(outcome, "theano-mnist")
    assert theano["n"] == 1 and theano["runs"] == "good" and theano["mean"] == 1.5
    assert "seed 2 interrupted, resumable: interrupted" in outcome.notes[("bnn_table1", "theano-mnist")]
    md = (out / "bnn_table1.md").read_text()
    for name in reasons:  # the runs root's problems are printed, the table names only its records'
        assert f"{name}`: " not in md and any(name in line for line in pipeline.report_lines(outcome))
    lines = pipeline.report_lines(outcome)
    assert "9 run directories not counted:" in lines


def test_a_run_of_the_preset_with_other_settings_is_not_counted(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "binary", THEANO, 0, 2.0)
    write_run(runs, "float-baseline", THEANO + ["quant.activation=identity"], 1, 1.0)
    write_run(runs, "other-scale", THEANO, 2, 1.0, scale="quick")
    outcome = _make(runs, tmp_path / "out", figures=False)
    theano = _row(outcome, "theano-mnist")
    assert theano["n"] == 1 and theano["runs"] == "binary"
    assert "1 run(s) of this preset differ in quant.activation: not counted" in outcome.notes[("bnn_table1", "theano-mnist")]


def test_duplicate_seed_uses_the_newest_run(tmp_path):
    import os

    runs = tmp_path / "runs"
    old = write_run(runs, "old", THEANO, 0, 5.0)
    write_run(runs, "new", THEANO, 0, 2.0)
    os.utime(old / "summary.json", (1, 1))
    outcome = _make(runs, tmp_path / "out", figures=False)
    theano = _row(outcome, "theano-mnist")
    assert theano["runs"] == "new" and "1 older duplicate run(s)" in "; ".join(outcome.notes[("bnn_table1", "theano-mnist")])


def test_preset_that_does_not_compose_stays_with_its_reason(tmp_path):
    table = targets.parse({"paper": "p", "title": "t", "tables": [{
        "id": "x", "title": "T", "metric": "test_error", "unit": "percent", "source": "s", "columns": ["m"],
        "rows": [{"id": "r", "labels": {"m": "x"}, "paper": {"value": 1.0, "tag": "U"},
                  "overrides": ["+experiment=no_such_preset"]}]}]})
    outcome = pipeline.make_tables([table], runs_dir=tmp_path / "runs", out_dir=tmp_path / "out", scale="smoke",
                                   seeds=(0,), train=True, runner=_forbidden, check_data=data_here,
                                   has_cuda=no_cuda, log=io.StringIO())
    assert outcome.results[0].frame.iloc[0]["status"].startswith("preset does not compose")
    assert outcome.launched == []


def _forbidden(argv):
    raise AssertionError(f"nothing may be launched, got {argv}")


# ---------------------------------------------------------------------------------- launching

class FakeLauncher:
    """Stands in for `python -m bnnrepro ...`: records each job and makes its runs complete."""

    def __init__(self, runs: Path):
        self.runs, self.calls = runs, []

    def __call__(self, argv):
        self.calls.append(argv)
        assert argv[:2] == ("train", "-m")
        resume = [a for a in argv if a.startswith("resume=")]
        if resume:
            for path in re.findall(r"'([^']*)'", resume[0]):
                run = Path(path)
                cfg = OmegaConf.load(run / "config.yaml")
                write_run(run.parent, run.name, _overrides_of(cfg), int(cfg.seed), 1.0)
            return 0
        (seeds,) = [a.split("=", 1)[1] for a in argv if a.startswith("seed=")]
        overrides = [a for a in argv[2:] if not a.startswith(("seed=", "runs_dir=", "hydra"))]
        key, values = overrides[0].split("=", 1)  # a sweep over presets: +experiment=a,b
        for value in values.split(","):
            for seed in seeds.split(","):
                write_run(self.runs, f"{value}-s{seed}", [f"{key}={value}", *overrides[1:]], int(seed), 2.0)
        return 0


def _overrides_of(cfg):
    return [f"+experiment={cfg.experiment}"]


def test_launch_then_nothing_new_launches_nothing(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    write_run(runs, "torch7-s1", TORCH7, 1, 3.0)
    write_run(runs, "theano-s2-interrupted", THEANO, 2, None)
    fake = FakeLauncher(runs)
    first = _make(runs, out, papers=("bnn", "qnn"), train=True, runner=fake, jobs=2, threads=1)
    # one job per runnable row over its missing seeds (QNN's rows that share BNN's presets are not
    # launched twice), one resume job; rows without data are not launched
    jobs = {" ".join(a for a in argv if not a.startswith("runs_dir=")) for argv in fake.calls}
    assert jobs == {
        "train -m +experiment=bnn_mnist_torch7 scale=smoke seed=0,2 train.progress=false device=auto "
        "train.num_threads=1 hydra/launcher=joblib hydra.launcher.n_jobs=2",
        "train -m +experiment=bnn_mnist_theano scale=smoke seed=0,1 train.progress=false device=auto "
        "train.num_threads=1 hydra/launcher=joblib hydra.launcher.n_jobs=2",
        "train -m +experiment=qnn_mnist_theano scale=smoke seed=0,1,2 train.progress=false device=auto "
        "train.num_threads=1 hydra/launcher=joblib hydra.launcher.n_jobs=2",
        f"train -m resume='{(runs / 'theano-s2-interrupted').resolve()}' hydra/launcher=joblib "
        "hydra.launcher.n_jobs=2",
    }
    assert all(code == 0 for _, code in first.launched)
    assert _row(first, "theano-mnist")["n"] == 3 and _row(first, "torch7-mnist")["n"] == 3
    assert _row(first, "theano-mnist", "qnn_table1")["n"] == 3
    written = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    fake.calls.clear()
    second = _make(runs, out, papers=("bnn", "qnn"), train=True, runner=fake, jobs=2)
    assert fake.calls == [] and second.launched == []
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == written  # byte-identical


def test_bare_presets_missing_the_same_seeds_share_one_multirun(tmp_path):
    """Rows missing one seed each (Merolla's five projections after a 2-seed study, say) would run
    one at a time as separate multiruns: they go into one sweep over the presets instead."""
    runs, out = tmp_path / "runs", tmp_path / "results"
    rows = [r for r in targets.load("merolla").tables[-1].rows if r.overrides]
    for row in rows:
        for seed in (0, 1):
            write_run(runs, f"{row.id}-s{seed}", list(row.overrides), seed, 1.5)
    fake = FakeLauncher(runs)
    outcome = _make(runs, out, papers=("merolla",), train=True, runner=fake, jobs=2, threads=1)
    assert len(fake.calls) == 1
    (sweep,) = [a for a in fake.calls[0] if a.startswith("+experiment=")]
    assert sorted(sweep.split("=", 1)[1].split(",")) == sorted(r.overrides[0].split("=", 1)[1] for r in rows)
    assert "seed=2" in fake.calls[0] and outcome.launched[0][0].runs == len(rows)
    assert all(_row(outcome, r.id, "merolla_mnist")["n"] == 3 for r in rows)


def test_failed_job_is_reported_and_the_table_still_written(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    outcome = _make(runs, out, train=True, runner=lambda argv: 3)
    assert outcome.failed and all(code == 3 for _, code in outcome.failed)
    assert (out / "bnn_table1.md").is_file()
    assert any(line.startswith("failed (exit status 3)") for line in pipeline.report_lines(outcome))


def test_job_paths_are_quoted_for_hydra():
    plan_dir = Path("/tmp/a dir,with=odd chars")
    (job,) = launch.plan_jobs([_plan_with_missing()], "smoke", plan_dir)
    assert "runs_dir='/tmp/a dir,with=odd chars'" in job.argv
    with pytest.raises(ValueError, match="single quote"):
        launch.plan_jobs([_plan_with_missing()], "smoke", Path("/tmp/it's"))


def _plan_with_missing():
    from bnnrepro.report.plan import RowPlan

    row = targets.load("bnn").tables[0].rows[3]
    return RowPlan(row, "smoke", (0,), config=compose(list(row.overrides) + ["scale=smoke"]))


# ---------------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "unknown target 'nosuch'; allowed: bnn, qnn, dorefa, merolla, bitflip_packed, merolla_study, quant_grid, all"),
    (["bnn", "seed=a,b"], "seed='a,b' must be comma-separated integers"),
    (["bnn", "seed=1,1"], "must list distinct non-negative integers"),
    (["bnn", "scale=huge"], "scale='huge': no such option in group `scale` (allowed: medium, paper, quick, smoke)"),
    (["bnn", "scale=quik"], "did you mean `scale=quick`?"),
    (["bnn", "--jobs", "0"], "--jobs and train.num_threads must be positive"),
    (["bnn", "--scale", "smoke"], "table: --scale is gone; write scale=NAME"),
    (["bnn", "--runs-dir", "x"], "table: --runs-dir is gone; write runs_dir=DIR"),
    (["bnn", "scal=smoke"], "unknown config key `scal`; did you mean `scale`?"),
    (["bnn", "--jobs", "x"], "bnnrepro: error: table: argument --jobs"),
])
def test_table_cli_bad_input_is_one_line(argv, message, capsys):
    assert commands.table_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnnrepro: error: ") and message in err and err.count("\n") == 1


def test_table_cli_no_train(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    write_run(runs, "theano-s0", THEANO, 0, 1.25)
    monkeypatch.chdir(tmp_path)
    code = commands.table_main(["bnn", "--no-train", "scale=smoke", "seed=0", f"runs_dir={runs}",
                                "--out", "res", "--no-figures"], check_data=data_here, has_cuda=no_cuda,
                               runner=_forbidden)
    assert code == 0
    printed = capsys.readouterr().out
    assert "res/bnn_table1.md (+ .csv, .tex): 22 rows, 8 reproducible, 1 with results" in printed
    md = (tmp_path / "res" / "bnn_table1.md").read_text()
    assert "`bnnrepro table bnn scale=smoke seed=0`" in md and "| 1.25 |" in md
    assert "from the run records under `runs/` beside this file" in md


def test_no_train_rebuilds_the_tables_byte_identically_from_the_records_alone(tmp_path, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "res"
    for seed, err in enumerate((1.25, 1.5, 2.0)):
        write_run(runs, f"theano-s{seed}", THEANO, seed, err)
    args = ["bnn", "--no-train", "scale=smoke", f"runs_dir={runs}", "--out", str(out)]
    hooks = dict(check_data=data_here, has_cuda=no_cuda, runner=_forbidden)
    assert commands.table_main(args, **hooks) == 0
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert (out / "runs" / "theano-s1" / "summary.json").is_file() and not list(out.rglob("*.pt"))
    for path in (out / "runs").rglob("*"):  # no path of this machine in a committed record
        if path.is_file():
            assert str(tmp_path) not in path.read_text(), path
    import shutil

    shutil.rmtree(runs)  # a fresh clone: the records only
    for path in out.rglob("*.md"):
        path.unlink()
    assert commands.table_main(args, **hooks) == 0
    second = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert second == first


def test_runs_from_a_modified_tree_count_only_when_allowed(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_run(runs, "clean", THEANO, 0, 2.0)
    dirty = write_run(runs, "dirty", THEANO, 1, 1.0)
    summary = json.loads((dirty / "summary.json").read_text())
    summary["code_version"]["git_dirty"] = True
    (dirty / "summary.json").write_text(json.dumps(summary))
    refused = _row(_make(runs, out, figures=False), "theano-mnist")
    assert refused["runs"] == "clean"
    assert not (out / "runs" / "dirty").exists()
    allowed = _make(runs, tmp_path / "out2", figures=False, allow_dirty=True)
    row = _row(allowed, "theano-mnist")
    assert row["runs"] == "clean, dirty" and "+dirty" in row["code_version"]
    assert "1 run(s) counted from a modified tree (+dirty)" in row["status"]


# ---------------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_real_runs_end_to_end_then_idempotent(mnist_root, tmp_path, monkeypatch, capsys):
    """`bnnrepro table bnn` at scale=smoke on real MNIST: trains the two MNIST rows through Hydra
    multiruns, writes the table; a second call trains nothing."""
    monkeypatch.setenv("BNNREPRO_DATA", str(mnist_root))
    argv = ["bnn", "scale=smoke", "seed=0", f"runs_dir={tmp_path / 'runs'}",
            "--out", str(tmp_path / "res")]
    calls = []

    def counting(args):
        calls.append(args)
        return launch.subprocess_runner(args)

    assert commands.table_main(argv, runner=counting, has_cuda=no_cuda) == 0
    assert len(calls) == 2
    frame = pd.read_csv(tmp_path / "res" / "bnn_table1.csv").set_index("row")
    for row in ("theano-mnist", "torch7-mnist"):
        assert frame.loc[row, "n"] == 1 and 0 < frame.loc[row, "mean"] < 100
        (run_dir,) = frame.loc[row, "run_dirs"].split("; ")
        assert (Path(run_dir) / "curves.png").is_file()
    capsys.readouterr()
    assert commands.summary_main([run_dir]) == 0  # the summary of a trained run, packed size measured
    out = capsys.readouterr().out
    assert "seed 0" in out and "packed artifact" in out and "compression x" in out
    calls.clear()
    assert commands.table_main(argv, runner=counting, has_cuda=no_cuda) == 0
    assert calls == []


def test_a_run_started_on_other_code_than_it_ended_on_is_dirty(tmp_path):
    run = write_run(tmp_path / "runs", "moved", THEANO, 0, 2.0)
    summary = json.loads((run / "summary.json").read_text())
    clean = dict(summary["code_version"])
    summary["code_version_start"] = {**clean, "git_commit": "fedcba9876543210"}
    (run / "summary.json").write_text(json.dumps(summary))
    assert run_records.read_run(run).dirty
    summary["code_version_start"] = clean
    (run / "summary.json").write_text(json.dumps(summary))
    assert not run_records.read_run(run).dirty


def test_training_on_a_modified_tree_is_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "code_version", lambda: {"package": "0.1.0", "git_commit": "0" * 40,
                                                           "git_dirty": True})
    with pytest.raises(ValueError, match="uncommitted changes"):
        _make(tmp_path / "runs", tmp_path / "out", train=True, runner=_forbidden, figures=False)
    launched = []
    _make(tmp_path / "runs", tmp_path / "out", train=True, allow_dirty=True, figures=False,
          runner=lambda argv: launched.append(argv) or 0)
    assert launched


def test_a_record_cut_short_is_a_problem_never_resumed(tmp_path):
    out = tmp_path / "out"
    write_run(out / "runs", "cut-short", THEANO, 0, None)  # a config without a summary
    outcome = _make(tmp_path / "runs", out, train=True, runner=lambda argv: 0, figures=False)
    assert any(p.path.name == "cut-short" for p in outcome.problems)
    assert not any("resume=" in " ".join(job.argv) and "cut-short" in " ".join(job.argv)
                   for job, _ in outcome.launched)


def test_a_newer_run_replaces_the_older_record_of_its_seed(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_run(out / "runs", "old", THEANO, 0, 5.0)  # a committed record
    write_run(runs, "new", THEANO, 0, 2.0)         # a newer run of the same row and seed
    theano = _row(_make(runs, out, figures=False), "theano-mnist")
    assert theano["runs"] == "new" and sorted(p.name for p in (out / "runs").iterdir()) == ["new"]
    import shutil

    shutil.rmtree(runs)  # the records alone now pick the same run
    assert _row(_make(runs, out, figures=False), "theano-mnist")["runs"] == "new"
