"""Training end to end on real MNIST: a smoke run, resume after SIGKILL, the run directory's contents."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bnnrepro.nn import QuantLayer
from bnnrepro import runs as run_files
from bnnrepro.train import fit, load_model
from conftest import compose

TINY = ["+paper=bnn", "scale=smoke", "scale.epochs=3", "scale.train_subset=1500", "train.progress=false"]


def _cli(args, env_extra=None, **kw):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bnnrepro", *args], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


def test_smoke_train_writes_a_complete_run(mnist_root, runs_dir):
    cfg = compose(TINY + [f"data.root={mnist_root}"])
    run = fit(cfg)
    assert run.parent == runs_dir
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    for key in ("test_error", "best_val_error", "final_test_error", "epochs_done", "wall_time_s",
                "dataset", "model", "quantizer", "scale", "seed", "paper", "experiment", "code_version"):
        assert key in summary, key
    assert summary["epochs_done"] == 3 and summary["scale"] == "smoke"
    assert summary["dataset"] == "mnist" and summary["paper"] == "bnn"
    assert 0 < summary["test_error"] < 60  # learnt something in 3 tiny epochs
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # BNN protocol: the reported test error is the one at the best validation epoch
    best = min(rows, key=lambda r: (r["val_error"], -r["epoch"]))
    assert summary["test_error"] == best["test_error"] and summary["best_epoch"] == best["epoch"]
    assert (run / "config.yaml").is_file() and (run / "last.pt").is_file() and (run / "best.pt").is_file()
    # checkpoints load with weights_only=True and rebuild a model giving the recorded test error
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 3
    model, _ = load_model(run, which="last")
    latent = [m.weight for m in model.modules() if isinstance(m, QuantLayer) and m.clips_latent_weights]
    assert all(w.abs().max() <= 1.0 for w in latent)  # clipped after every step


def test_cli_train_prints_run_dir_last(mnist_root, runs_dir, capsys):
    out = _cli(["train", *TINY, "scale.epochs=1", f"data.root={mnist_root}"])
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("run: ")
    run = Path(last[5:])
    assert (run / "summary.json").is_file()
    from bnnrepro import cli  # eval in this process: the same code as the console script

    assert cli.main(["eval", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert f"error {summary['test_error']:.2f}%" in capsys.readouterr().out


def _strip_times(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


# sign activations: test_faults' random SIGKILLs check the same exact resume (marked slow here);
# stochastic_sign adds the quantizer's RNG state and stays in the default suite
@pytest.mark.parametrize("activation", [pytest.param("sign", marks=pytest.mark.slow), "stochastic_sign"])
def test_resume_after_sigkill_matches_uninterrupted(mnist_root, runs_dir, activation):
    common = TINY + ["scale.epochs=4", f"quant.activation={activation}", f"data.root={mnist_root}",
                     "train.num_threads=1"]
    full = _cli(["train", *common, "run_name=full"])
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([sys.executable, "-m", "bnnrepro", "train", *common, "run_name=killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = runs_dir / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break  # epoch 2 is done: we are in (or right before) the 3rd epoch
        time.sleep(0.01)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (runs_dir / "killed" / "summary.json").exists()
    resumed = _cli(["train", f"resume={runs_dir / 'killed'}"])
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((runs_dir / "full" / "summary.json").read_text())
    b = json.loads((runs_dir / "killed" / "summary.json").read_text())
    for key in ("test_error", "best_val_error", "final_test_error", "final_val_error", "best_epoch",
                "epochs_done"):
        assert a[key] == b[key], key
    rows = lambda run: [json.loads(x) for x in (runs_dir / run / "metrics.jsonl").read_text().splitlines()]
    assert _strip_times(rows("full")) == _strip_times(rows("killed"))
    # resuming a completed run does nothing
    again = _cli(["train", f"resume={runs_dir / 'killed'}"])
    assert again.returncode == 0 and "already completed" in again.stderr


def test_interrupted_metrics_line_without_checkpoint_is_rewritten(mnist_root, runs_dir):
    cfg = compose(TINY + ["scale.epochs=2", f"data.root={mnist_root}", "run_name=r"])
    run = fit(cfg)
    # simulate a crash after epoch 2's metrics line but before its checkpoint: roll back to epoch 1
    state = run_files.load_checkpoint(run / "last.pt")
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "summary.json").unlink()
    state["epoch"] = 1
    state.pop("format")
    state.pop("version")
    run_files.save_checkpoint(run / "last.pt", state)
    assert len(rows) == 2
    fit(compose([f"resume={run}"]))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow  # also checked by test_faults (two multiruns, runs.txt) and test_launchers (joblib, runs.txt)
def test_multirun_makes_one_run_per_seed(mnist_root, runs_dir):
    out = _cli(["train", "-m", *TINY, "scale.epochs=1", "scale.train_subset=500", f"data.root={mnist_root}",
                "seed=0,1"])
    assert out.returncode == 0, out.stderr
    runs = [Path(line[5:]) for line in out.stdout.splitlines() if line.startswith("run: ")]
    assert len(runs) == 2 and len(set(runs)) == 2
    seeds = sorted(json.loads((r / "summary.json").read_text())["seed"] for r in runs)
    assert seeds == [0, 1]
    sweeps = list((runs_dir / "multirun").iterdir())
    assert len(sweeps) == 1
    listed = sorted((sweeps[0] / "runs.txt").read_text().split())
    assert listed == sorted(str(r.resolve()) for r in runs)


def test_truncated_last_checkpoint_falls_back_to_previous(mnist_root, runs_dir, capsys):
    common = TINY + ["scale.epochs=3", f"data.root={mnist_root}"]
    full = fit(compose(common + ["run_name=a"]))
    run = fit(compose(common + ["run_name=b"]))
    (run / "summary.json").unlink()
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a torn write
    fit(compose([f"resume={run}"]))
    assert "last.pt cannot be loaded safely" in capsys.readouterr().err
    a, b = (json.loads((r / "summary.json").read_text()) for r in (full, run))
    assert (a["test_error"], a["final_test_error"], a["epochs_done"]) == (
        b["test_error"], b["final_test_error"], b["epochs_done"])


def test_nan_loss_stops_naming_epoch_and_step(mnist_root, runs_dir, monkeypatch):
    from bnnrepro.errors import TrainingDiverged
    from bnnrepro.train import loop
    from bnnrepro.train.factory import squared_hinge

    calls = {"n": 0}

    def poisoned(output, target):
        loss = squared_hinge(output, target)
        if not torch.is_grad_enabled():
            return loss  # evaluation
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 20 else loss  # epoch 1 has 15 steps of 100

    monkeypatch.setattr(loop, "build_loss", lambda name: poisoned)
    cfg = compose(TINY + [f"data.root={mnist_root}", "run_name=nan"])
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, step 5"):
        fit(cfg)
    run = runs_dir / "nan"
    assert run_files.load_checkpoint(run / "last.pt")["epoch"] == 1  # the last good checkpoint is kept
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    fit(compose([f"resume={run}"]))  # a diverged run is finished: resuming is a no-op
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
