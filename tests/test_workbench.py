"""The workbench: `bnnrepro runs` and its pandas loader, a multirun's seed aggregate, curves.png at the
end of every run and `bnnrepro plot`, the csv and tensorboard loggers, `table --dry-run` and the
duration estimates behind it and behind the scale=paper-on-CPU warning."""
import json
import math
import os
import statistics
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bnnrepro import cli, runs
from bnnrepro.config import CHOICES, validate
from bnnrepro.errors import ConfigError, RunError
from bnnrepro.report import commands
from bnnrepro.runs import sweep
from bnnrepro.train import estimate, loggers
from conftest import compose
from test_report_fixtures import data_here, no_cuda, write_run

THEANO = ["+experiment=bnn_mnist_theano"]
TORCH7 = ["+experiment=bnn_mnist_torch7"]
PNG = b"\x89PNG\r\n\x1a\n"


def _main(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def four_kinds(tmp_path):
    """A folder with a completed, an interrupted, a diverged and a broken run."""
    root = tmp_path / "runs"
    write_run(root, "done", THEANO, 0, 2.5, wall=30.0)
    write_run(root, "half", THEANO, 1, None, epochs=3, wall=9.0)
    diverged = write_run(root, "nan", THEANO, 2, None, epochs=1)
    runs.atomic_write_json(diverged / runs.SUMMARY, {"status": "diverged", "message": "loss is nan", "epoch": 2})
    broken = write_run(root, "broken", TORCH7, 0, 1.0)
    (broken / runs.SUMMARY).write_text("{not json")
    return root


# ---------------------------------------------------------------------------------- the loader

def test_frame_has_every_status_and_dotted_config_columns(four_kinds):
    df = runs.frame([four_kinds]).set_index("id")
    assert df["status"].to_dict() == {"broken": "problem", "done": "completed", "half": "interrupted",
                                      "nan": "diverged"}
    assert "not valid JSON" in df.loc["broken", "problem"] and df.loc["done", "problem"] == ""
    assert df.loc["done", "test_error"] == 2.5 and df.loc["done", "wall_time_s"] == 30.0
    assert math.isnan(df.loc["half", "test_error"])
    # an interrupted run: its finished epochs, of the epochs its config asks for (smoke caps them at 2)
    assert df.loc["half", "epochs_done"] == 3 and df.loc["half", "epochs"] == 2
    assert df.loc["half", "wall_time_s"] == pytest.approx(9.0)
    assert df.loc["done", "model.name"] == "mlp" and df.loc["done", "experiment"] == "bnn_mnist_theano"
    assert isinstance(df.loc["done", "model.hidden"], tuple)  # lists become hashable, to group by
    assert list(df.columns[:len(runs.COLUMNS) - 1]) == list(runs.COLUMNS[1:])


def test_epochs_frame_and_paths_of_every_kind(four_kinds, tmp_path):
    ep = runs.epochs_frame([four_kinds / "done", four_kinds / "half"])
    assert sorted(ep.groupby("id")["epoch"].max().items()) == [("done", 2), ("half", 3)]
    sweep_dir = tmp_path / "sweep"
    runs.record_in_sweep(sweep_dir, four_kinds / "done")
    assert [p.name for p in runs.run_dirs([sweep_dir, sweep_dir / runs.RUNS_LIST, four_kinds / "done"])] == ["done"]
    with pytest.raises(RunError, match="no such run directory"):
        runs.run_dirs([tmp_path / "nowhere"])


def test_groups_mean_and_sample_std_over_completed_runs(tmp_path):
    errors = {0: 1.0, 1: 2.0, 2: 4.5}
    for seed, err in errors.items():
        write_run(tmp_path, f"t{seed}", THEANO, seed, err)
    write_run(tmp_path, "f0", TORCH7, 0, 3.0)
    write_run(tmp_path, "f1", TORCH7, 1, None)  # interrupted: counted apart
    g = runs.groups(runs.frame([tmp_path]), ["experiment", "scale"]).set_index("experiment")
    theano, torch7 = g.loc["bnn_mnist_theano"], g.loc["bnn_mnist_torch7"]
    assert theano["n"] == 3 and theano["seeds"] == (0, 1, 2)
    assert theano["mean"] == pytest.approx(statistics.mean(errors.values()))
    assert theano["std"] == pytest.approx(statistics.stdev(errors.values()))
    assert torch7["n"] == 1 and math.isnan(torch7["std"]) and torch7["others"] == 1
    with pytest.raises(ValueError, match="did you mean 'quant.w_bits'"):
        runs.groups(runs.frame([tmp_path]), ["quant.wbits"])


# ---------------------------------------------------------------------------------- bnnrepro runs

def test_runs_lists_and_groups(four_kinds, capsys):
    code, out, err = _main(["runs", str(four_kinds)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["id", "status", "experiment", "scale", "seed", "epochs", "test", "error", "wall",
                                "time"]
    done = next(line for line in lines if line.startswith("done "))
    assert done.split()[1:] == ["completed", "bnn_mnist_theano", "smoke", "0", "2/2", "2.50", "%", "30", "s"]
    assert "not valid JSON" in next(line for line in lines if line.startswith("broken "))
    assert lines[-1] == "4 runs: 1 completed, 1 interrupted, 1 diverged, 1 problem"
    code, out, _ = _main(["runs", str(four_kinds), "--group-by", "experiment,scale"], capsys)
    assert code == 0
    assert "experiment=bnn_mnist_theano scale=smoke  n=1  test_error 2.50 % (one run: no std)  seeds 0  " \
           "(+2 not completed)" in out.splitlines()


def test_runs_status_json_and_default_root(four_kinds, capsys, monkeypatch):
    monkeypatch.setenv("BNNREPRO_RUNS", str(four_kinds))
    code, out, _ = _main(["runs", "--status", "interrupted,diverged", "--json", "-"], capsys)
    assert code == 0
    assert sorted((r["id"], r["status"]) for r in json.loads(out)) == [("half", "interrupted"), ("nan", "diverged")]
    assert all(r["test_error"] is None for r in json.loads(out))


@pytest.mark.parametrize("argv, message", [
    (["runs", "RUNS", "--status", "done"], "--status 'done' is unknown; allowed: completed, running, interrupted, diverged, problem"),
    (["runs", "RUNS", "--group-by", "quant.wbits"], "did you mean 'quant.w_bits'?"),
    (["runs", "MISSING"], "no such run directory, sweep folder or runs.txt"),
    (["plot", "RUNS", "--metric", "accuracy"], "--metric 'accuracy' is not a metrics.jsonl field; allowed: lr, train_loss"),
])
def test_bad_input_is_one_line(argv, message, four_kinds, capsys):
    argv = [str(four_kinds) if a == "RUNS" else str(four_kinds / "missing") if a == "MISSING" else a for a in argv]
    code, _, err = _main(argv, capsys)
    assert code == 2 and err.startswith("bnnrepro: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_completion_knows_the_new_commands():
    from bnnrepro.commandline import candidates

    assert {"runs", "plot"} <= set(candidates(["bnnrepro", ""], cli.COMMANDS))
    assert "--group-by" in candidates(["bnnrepro", "runs", "--gr"], cli.COMMANDS)
    assert "--dry-run" in candidates(["bnnrepro", "table", "--dr"], cli.COMMANDS)


# ---------------------------------------------------------------------------------- curves

def test_plot_draws_one_band_per_group(tmp_path, capsys):
    for seed in (0, 1):
        write_run(tmp_path / "runs", f"t{seed}", THEANO, seed, 2.0)
    write_run(tmp_path / "runs", "f0", TORCH7, 0, 3.0)
    out = tmp_path / "fig.png"
    code, printed, err = _main(["plot", str(tmp_path / "runs"), "--out", str(out)], capsys)
    assert code == 0, err
    assert out.read_bytes().startswith(PNG)
    assert printed.startswith(f"{out}: 2 group(s), 3 runs")  # grouped by what differs, the seed aside


def test_plot_groups_with_no_finite_value_draws_nothing(tmp_path):
    import pandas as pd

    from bnnrepro.report.curves import plot_groups

    epochs = pd.DataFrame({"id": ["a", "a"], "epoch": [1, 2], "test_error": [float("nan"), float("inf")]})
    assert plot_groups([("a", epochs)], "test_error", tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_a_plotting_failure_warns_and_never_raises(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path, "r", THEANO, 0, 1.0)
    assert runs.draw_curves(run).read_bytes().startswith(PNG)
    from bnnrepro.runs import curves

    def broken(_run_dir):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(curves, "plot_run", broken)
    assert runs.draw_curves(run) is None
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {run / 'curves.png'} not written (RuntimeError: no fonts)") and err.count("\n") == 1


# ---------------------------------------------------------------------------------- loggers

def test_logger_choices_are_the_loggers_and_validation_names_them():
    assert set(CHOICES["logger.name"]) == set(loggers.LOGGERS)
    cfg = compose(["+paper=bnn", "scale=smoke", "logger.name=tensorbord"])
    with pytest.raises(ConfigError, match="logger.name='tensorbord' is not allowed; allowed: local, csv, tensorboard, wandb"):
        validate(cfg)


def test_tensorboard_without_its_package_fails_at_validation(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        validate(compose(["+paper=bnn", "scale=smoke", "logger=tensorboard"]))


def test_csv_logger_rewrites_the_finished_epochs(tmp_path):
    run = write_run(tmp_path, "r", THEANO, 0, None, epochs=2)  # a resumed run: two epochs done
    logger = loggers.CsvLogger(None, run)
    logger.log({"epoch": 3, "train_loss": 0.25, "test_error": 5.0})
    import pandas as pd

    table = pd.read_csv(run / "metrics.csv")
    assert list(table["epoch"]) == [1, 2, 3] and table["train_loss"].iloc[-1] == 0.25
    assert table["val_error"].isna().iloc[-1]  # a field the new line lacks stays empty


def test_tensorboard_logger_writes_scalars_by_epoch(tmp_path, monkeypatch):
    calls = {}

    class Writer:
        def __init__(self, log_dir, purge_step):
            calls["init"] = (log_dir, purge_step)
            calls["scalars"] = []

        def add_scalar(self, key, value, global_step):
            calls["scalars"].append((key, value, global_step))

        def flush(self):
            pass

        def close(self):
            calls["closed"] = True

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    run = write_run(tmp_path, "r", THEANO, 0, None, epochs=2)
    logger = loggers.TensorBoardLogger(None, run)
    assert calls["init"] == (str(run / "tensorboard"), 3)  # a resume purges what came after epoch 2
    logger.log({"epoch": 3, "test_error": 4.0, "note": "x"})
    logger.finish({"test_error": 4.0, "epochs_done": 3})
    assert calls["scalars"] == [("test_error", 4.0, 3), ("summary/test_error", 4.0, 3)] and calls["closed"]


# ---------------------------------------------------------------------------------- estimates

def test_count_macs_of_dense_and_conv_layers_keeps_the_rng():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 8 * 8, 10))
    model.train()
    state = torch.get_rng_state()
    assert estimate.count_macs(model, (1, 8, 8)) == 4 * 1 * 3 * 3 * 8 * 8 + 4 * 8 * 8 * 10
    assert torch.equal(torch.get_rng_state(), state) and model.training


def test_estimate_from_finished_runs_of_the_same_config(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, f"t{seed}", THEANO, seed, 2.0, wall=12.0 + 8 * seed)  # 2 epochs each
    write_run(tmp_path, "other", TORCH7, 0, 2.0, wall=1000.0)
    found = runs.scan(tmp_path).completed
    cfg = compose(THEANO + ["scale=smoke", "seed=7"])
    est = estimate.from_runs(cfg, found, epochs=10)
    assert est.seconds_per_epoch == pytest.approx((12.0 + 20.0) / 4) and est.seconds == pytest.approx(80.0)
    assert "from 2 finished runs" in est.text()
    assert estimate.from_runs(compose(THEANO + ["scale=quick"]), found, epochs=10) is None  # other width
    assert cfg.device == "cpu" and estimate.from_runs(cfg, found, epochs=10, gpu=True) is None  # CPU runs


def test_dry_run_lists_the_runs_and_trains_nothing(tmp_path, capsys, monkeypatch):
    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    for seed in (0, 1):
        write_run(runs_dir, f"t{seed}", THEANO, seed, 2.0, wall=30.0)
    monkeypatch.setattr(commands, "_fail", lambda m: pytest.fail(m))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = commands.table_main(["bnn", "--dry-run", "scale=smoke", "seed=0,1,2", f"runs_dir={runs_dir}",
                                "--out", str(out)], check_data=data_here, has_cuda=no_cuda,
                               runner=lambda argv: pytest.fail("trained"))
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    theano = next(line for line in printed.splitlines() if line.startswith("  theano-mnist:"))
    assert "+experiment=bnn_mnist_theano scale=smoke seeds 2: about 30 s (2 epochs x 15 s, from 2 finished runs" in theano
    torch7 = next(line for line in printed.splitlines() if line.startswith("  torch7-mnist:"))
    assert "seeds 0,1,2" in torch7 and "rough, from the model's size" in torch7
    assert "total: 4 run(s)" in printed and "would run: bnnrepro train -m" in printed


def test_paper_scale_on_cpu_warns_once_and_small_runs_pay_nothing(tmp_path, monkeypatch, capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.Linear(100, 10))
    splits = types.SimpleNamespace(input_shape=(1, 28, 28), train_x=torch.zeros(50_000, 1), val_x=torch.zeros(10_000, 1),
                                   test_x=torch.zeros(10_000, 1))
    monkeypatch.setattr(runs, "scan", lambda root: pytest.fail("a small run scanned the runs root"))
    estimate.warn_paper_on_cpu(compose(THEANO + ["scale=smoke"]), model, splits, torch.device("cpu"), 2)
    assert capsys.readouterr().err == ""
    monkeypatch.undo()
    cfg = compose(THEANO + ["scale=paper", f"runs_dir={tmp_path}"])
    estimate.warn_paper_on_cpu(cfg, model, splits, torch.device("cpu"), 1000)
    err = capsys.readouterr().err
    macs = 784 * 100 + 100 * 10
    seconds = 1000 * macs * (6 * 50_000 + 2 * 20_000) / (estimate.CPU_FLOPS_PER_THREAD * torch.get_num_threads())
    assert err.count("\n") == 1 and err.startswith(f"scale=paper on CPU: about {runs.format_duration(seconds)} (1000 epochs")
    assert "rough, from the model's size" in err


# ---------------------------------------------------------------------------------- multirun

def test_sweep_aggregate_groups_by_everything_but_the_seed(tmp_path):
    sweep_dir = tmp_path / "sweep"
    for bits, errors in ((1, (2.0, 3.0)), (2, (1.0, 1.5))):
        for seed, err in enumerate(errors):
            run = write_run(tmp_path / "runs", f"b{bits}-s{seed}", ["+paper=dorefa", f"quant.a_bits={bits}"], seed, err)
            runs.record_in_sweep(sweep_dir, run)
    lines = sweep.aggregate_lines(sweep_dir)
    assert lines[0].endswith("4 runs (4 completed); test error over the seeds, by quant.a_bits")
    assert lines[1:] == [f"  quant.a_bits=1  n=2  test_error 2.50 ± {statistics.stdev((2.0, 3.0)):.2f} %  seeds 0,1",
                         f"  quant.a_bits=2  n=2  test_error 1.25 ± {statistics.stdev((1.0, 1.5)):.2f} %  seeds 0,1"]


def test_a_multirun_prints_its_aggregate_and_each_run_its_curves_and_csv(mnist_root, runs_dir):
    env = {**os.environ, "BNNREPRO_RUNS": str(runs_dir)}
    out = subprocess.run([sys.executable, "-m", "bnnrepro", "train", "-m", "+paper=bnn", "scale=smoke",
                          "scale.epochs=1", "scale.train_subset=300", "train.progress=false", "logger=csv",
                          f"data.root={mnist_root}", "seed=0,1"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    made = [Path(line[5:]) for line in out.stdout.splitlines() if line.startswith("run: ")]
    tail = out.stdout.splitlines()[-2:]
    assert tail[0].startswith("sweep ") and "2 runs (2 completed)" in tail[0]
    errors = [json.loads((r / "summary.json").read_text())["test_error"] for r in made]
    assert tail[1] == (f"  experiment=bnn_mnist_theano scale=smoke  n=2  test_error {statistics.mean(errors):.2f} ± "
                       f"{statistics.stdev(errors):.2f} %  seeds 0,1")
    for run in made:
        assert (run / "curves.png").read_bytes().startswith(PNG)
        assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,lr,train_loss")


def test_a_group_that_mixes_configs_says_which_keys_differ():
    """Grouping the committed runs by experiment alone pools MNIST and Fashion-MNIST runs of one
    Merolla preset: the group says data.name differs; grouped by it too, it does not."""
    committed = Path(__file__).resolve().parents[1] / "results" / "runs"
    df = runs.frame([committed])
    by_experiment = runs.groups(df, ["experiment"]).set_index("experiment")
    assert "data.name" in by_experiment.loc["merolla_clip", "mixed"]
    # BNN Table 1's Torch7 runs: three at scale=quick, one at the paper's protocol in bf16
    assert {"scale.name", "train.precision"} <= set(by_experiment.loc["bnn_mnist_torch7", "mixed"])
    by_scale = runs.groups(df, ["experiment", "scale.name"]).set_index(["experiment", "scale.name"])
    assert by_scale.loc[("bnn_mnist_torch7", "quick"), "mixed"] == ()
    assert by_scale.loc[("bnn_mnist_torch7", "paper"), "mixed"] == ()
    line = [t for t in runs.group_lines(runs.groups(df, ["experiment"]), ["experiment"]) if "=merolla_clip " in t]
    assert "mixes configs: data.name differ" in line[0]
    split = runs.groups(df, ["experiment", "data.name"]).set_index(["experiment", "data.name"])
    assert split.loc[("merolla_clip", "mnist"), "mixed"] == ()
